"""The typed state model: forms, validation, references, updates, conflicts, deltas."""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from state_strategies import session_states
from stuisession.errors import ConflictError, ValidationError
from stuisession.state.deltas import changes_since, check_rebase
from stuisession.state.refs import check_object_id, is_ref, iter_refs, ref
from stuisession.state.schema import (
    Evaluation,
    Inspector,
    ObjectRecord,
    SessionState,
    Workspace,
    from_model_dict,
    from_wire,
    to_model_dict,
    to_wire,
    validate_state,
)
from stuisession.state.updates import (
    StateUpdate,
    merge_patch,
    overlaps,
    patch_paths,
    structure_evaluations,
)
from volume import examples


def _json_roundtrip(value: Any) -> Any:
    return json.loads(json.dumps(value, ensure_ascii=False))


@pytest.mark.volume
@settings(max_examples=examples(full=150, quick=15), deadline=None)
@given(session_states())
def test_model_form_roundtrips(state: SessionState) -> None:
    validate_state(state)
    assert from_model_dict(_json_roundtrip(to_model_dict(state))) == state


@pytest.mark.volume
@settings(max_examples=examples(full=150, quick=15), deadline=None)
@given(session_states())
def test_wire_form_roundtrips_with_identity(state: SessionState) -> None:
    wire = _json_roundtrip(to_wire(state))
    back = from_wire(wire)
    assert back == state
    # references are ids: the same object id before and after means the same object
    for name, ws in state.workspaces.items():
        for var, value in ws.variables.items():
            assert list(iter_refs(back.workspaces[name].variables[var])) == list(iter_refs(value))


@pytest.mark.volume
@settings(max_examples=examples(full=100, quick=12), deadline=None)
@given(session_states())
def test_upstream_views_are_derived(state: SessionState) -> None:
    wire = to_wire(state)
    assert wire["object_registry"] == {k: o.print_string for k, o in state.objects.items()}
    assert wire["stale_objects"] == sorted(k for k, o in state.objects.items() if not o.restorable)
    current = state.workspaces.get(state.current_workspace)
    if current is not None:
        assert wire["workspace_context"]["variables"] == sorted(current.variables)
    if state.selected_inspector is not None:
        selected = state.inspectors[state.selected_inspector]
        assert wire["inspector_state"]["selected_object"] == selected.object_id


def graph_state() -> SessionState:
    """Two variables share one object; two objects form a cycle; one is stale."""
    return SessionState(
        workspaces={
            "default": Workspace(
                variables={"a": ref("p1"), "b": ref("p1"), "n": 42, "ring": ref("n1")},
                history=[Evaluation(source="a := 3@4", result=ref("p1"), printed="3@4")],
            )
        },
        objects={
            "p1": ObjectRecord(
                class_name="Point",
                print_string="3@4",
                serialized="Point{#x:3,#y:4}",
                serialized_format="ston",
                slots={"x": 3, "y": 4},
            ),
            "n1": ObjectRecord(class_name="Node", print_string="a Node", slots={"next": ref("n2")}),
            "n2": ObjectRecord(class_name="Node", print_string="a Node", slots={"next": ref("n1")}),
            "s1": ObjectRecord(class_name="Socket", print_string="a Socket", restorable=False),
        },
        inspectors={
            "i1": Inspector(
                object_id="n1",
                path=["next", "next"],
                selected="next",
                scroll=3,
                view="raw",
                pinned=True,
            )
        },
        selected_inspector="i1",
    )


class HostDouble:
    """Test double of the Pharo side: materialises records into Python objects, one per id."""

    def __init__(self, wire: dict[str, Any]) -> None:
        self.records = wire["objects"]
        self.live: dict[str, Any] = {}
        for oid in self.records:
            self.live[oid] = {"class": self.records[oid]["class_name"]}
        for oid, rec in self.records.items():
            for slot, value in rec.get("slots", {}).items():
                self.live[oid][slot] = self.value(value)

    def value(self, v: Any) -> Any:
        return self.live[v["$ref"]] if is_ref(v) else v


def test_shared_references_and_cycles_survive_materialisation() -> None:
    wire = _json_roundtrip(to_wire(graph_state()))
    host = HostDouble(wire)
    ws = wire["workspace_context"]["workspaces"]["default"]["variables"]
    a, b = host.value(ws["a"]), host.value(ws["b"])
    assert a is b  # one object, two variables
    ring = host.value(ws["ring"])
    assert ring["next"]["next"] is ring  # a cycle stays a cycle
    assert wire["stale_objects"] == ["s1"]
    assert wire["inspector_state"]["selected_object"] == "n1"
    assert wire["workspace_context"]["variables"] == ["a", "b", "n", "ring"]


@pytest.mark.parametrize(
    "state, where",
    [
        (
            SessionState(workspaces={"w": Workspace(variables={"x": ref("missing")})}),
            "workspaces.w.variables",
        ),
        (
            SessionState(objects={"o": ObjectRecord(class_name="A", slots={"s": ref("gone")})}),
            "objects.o.slots",
        ),
        (
            SessionState(objects={"o": ObjectRecord(class_name="A", elements=[[ref("gone")]])}),
            "objects.o.elements",
        ),
        (SessionState(inspectors={"i": Inspector(object_id="nope")}), "inspectors.i"),
        (SessionState(selected_inspector="nope"), "selected_inspector"),
        (SessionState(objects={"bad id!": ObjectRecord(class_name="A")}), "objects"),
        (SessionState(session_state={"f": float("nan")}), "session_state"),
    ],
)
def test_validation_names_the_place(state: SessionState, where: str) -> None:
    with pytest.raises(ValidationError) as info:
        validate_state(state)
    assert info.value.details["field"] == where


@pytest.mark.parametrize(
    "model",
    [
        {"workspaces": {"w": {"variables": []}}},
        {"objects": {"o": {"class_name": 3}}},
        {"objects": {"o": {"class_name": "A", "restorable": "yes"}}},
        {"inspectors": {"i": {"object_id": "o", "path": [True]}}},
        {"inspectors": {"i": {"object_id": "o", "scroll": "far"}}},
        {"unknown_section": {}},
        {"preferences": {"history_limit": "many"}},
        {"workspaces": {"w": {"history": [{"printed": "no source"}]}}},
    ],
)
def test_wrong_types_are_refused(model: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        from_model_dict(model)


def test_refs_helpers() -> None:
    assert is_ref({"$ref": "a"})
    assert not is_ref({"$ref": 1})
    assert not is_ref({"$ref": "a", "x": 1})
    assert sorted(iter_refs([{"$ref": "a"}, {"k": {"$ref": "b"}}, {"$ref": 3}])) == ["a", "b"]
    assert check_object_id("obj_7") == "obj_7"
    with pytest.raises(ValidationError):
        check_object_id("../x")


def test_merge_patch_rfc7386_examples() -> None:
    # examples from RFC 7386 section 3
    assert merge_patch({"a": "b"}, {"a": "c"}) == {"a": "c"}
    assert merge_patch({"a": "b"}, {"b": "c"}) == {"a": "b", "b": "c"}
    assert merge_patch({"a": "b"}, {"a": None}) == {}
    assert merge_patch({"a": [{"b": "c"}]}, {"a": [1]}) == {"a": [1]}
    assert merge_patch(["a", "b"], ["c", "d"]) == ["c", "d"]
    assert merge_patch({"a": "foo"}, "bar") == "bar"
    assert merge_patch({"e": None}, {"a": 1}) == {"e": None, "a": 1}
    assert merge_patch({}, {"a": {"bb": {"ccc": None}}}) == {"a": {"bb": {}}}


def test_patch_paths_follow_existing_objects_and_coarsen() -> None:
    target = {"default": {"variables": {"x": 1}}}
    assert patch_paths(("workspaces",), {"default": {"variables": {"x": 2}}}, target) == [
        ("workspaces", "default", "variables", "x")
    ]
    # the target has no such key: the whole new subtree is one path
    assert patch_paths(("workspaces",), {"other": {"variables": {"x": 2}}}, target) == [
        ("workspaces", "other")
    ]
    # a reference is a value, never descended into
    assert patch_paths(("w",), {"x": {"$ref": "o"}}, {"x": {"y": 1}}) == [("w", "x")]
    big = {str(i): i for i in range(300)}
    assert patch_paths(("s",), big, {}) == [("s",)]
    assert overlaps(("a", "b"), ("a",)) and not overlaps(("a", "b"), ("a", "c"))


def base_state() -> SessionState:
    return StateUpdate(
        patches={
            "objects": {"o1": {"class_name": "A"}},
            "workspaces": {"default": {"variables": {"x": 1, "y": 2}}},
        }
    ).apply(SessionState(), 2)


def test_update_applies_and_logs_paths_and_counters() -> None:
    s = base_state()
    s3 = StateUpdate(
        patches={"workspaces": {"default": {"variables": {"x": ref("o1")}}}},
        append_history={"default": [Evaluation(source="x := A new", result=ref("o1"))]},
        client_version="0.9.1",
    ).apply(s, 3)
    assert s3.workspaces["default"].variables == {"x": ref("o1"), "y": 2}
    assert len(s3.workspaces["default"].history) == 1
    assert s3.metadata.updates == 2 and s3.metadata.evaluations == 1
    assert s3.metadata.last_client_version == "0.9.1"
    assert s3.changes[-1].revision == 3
    assert s3.changes[-1].paths == [["workspaces", "default", "variables", "x"]]
    assert s3.changes[-1].appends == [["workspaces", "default", "history"]]
    assert s == base_state()  # the input state is untouched


def test_update_refuses_dangling_reference_and_changes_nothing() -> None:
    s = base_state()
    with pytest.raises(ValidationError):
        StateUpdate(patches={"workspaces": {"default": {"variables": {"z": ref("nope")}}}}).apply(
            s, 3
        )
    with pytest.raises(ValidationError):  # deleting an object still referenced
        StateUpdate(
            patches={
                "objects": {"o1": None},
                "workspaces": {"default": {"variables": {"q": ref("o1")}}},
            }
        ).apply(s, 3)
    assert s == base_state()


def test_history_limit_drops_oldest() -> None:
    s = StateUpdate(patches={"preferences": {"history_limit": 3}, "workspaces": {"w": {}}}).apply(
        SessionState(), 2
    )
    for i in range(5):
        s = StateUpdate(append_history={"w": [Evaluation(source=str(i))]}).apply(s, 3 + i)
    assert [e.source for e in s.workspaces["w"].history] == ["2", "3", "4"]


def test_append_creates_missing_workspace() -> None:
    s = StateUpdate(append_history={"new": [Evaluation(source="1")]}).apply(SessionState(), 2)
    assert [e.source for e in s.workspaces["new"].history] == ["1"]


def test_set_paths_replace_not_merge() -> None:
    s = StateUpdate(patches={"contexts": {"t": {"variables": {"a": 1, "b": 2}}}}).apply(
        SessionState(), 2
    )
    s = StateUpdate(sets=((("contexts", "t"), {"variables": {"c": 3}}),)).apply(s, 3)
    assert s.contexts["t"].variables == {"c": 3}
    s = StateUpdate(sets=((("contexts", "t"), None),)).apply(s, 4)
    assert s.contexts == {}


def test_rebase_disjoint_keys_merge_and_same_key_conflicts() -> None:
    s2 = base_state()
    s3 = StateUpdate(patches={"workspaces": {"default": {"variables": {"x": 10}}}}).apply(s2, 3)
    other_key = StateUpdate(patches={"workspaces": {"default": {"variables": {"y": 20}}}})
    check_rebase(s3, 3, other_key, 2)  # disjoint: allowed
    same_key = StateUpdate(patches={"workspaces": {"default": {"variables": {"x": 30}}}})
    with pytest.raises(ConflictError) as info:
        check_rebase(s3, 3, same_key, 2)
    assert info.value.current_revision == 3
    assert info.value.details["path"] == ["workspaces", "default", "variables", "x"]
    check_rebase(s3, 3, same_key, 3)  # based on the current revision: fine
    with pytest.raises(ConflictError):
        check_rebase(s3, 3, same_key, 7)  # from the future
    with pytest.raises(ConflictError):
        check_rebase(s3, 3, other_key, 0)  # the log doesn't reach back that far


def test_appends_commute_but_conflict_with_replacement() -> None:
    s2 = StateUpdate(patches={"workspaces": {"w": {}}}).apply(SessionState(), 2)
    s3 = StateUpdate(append_history={"w": [Evaluation(source="a")]}).apply(s2, 3)
    check_rebase(s3, 3, StateUpdate(append_history={"w": [Evaluation(source="b")]}), 2)
    s4 = StateUpdate(patches={"workspaces": {"w": {"history": []}}}).apply(s3, 4)
    with pytest.raises(ConflictError):
        check_rebase(s4, 4, StateUpdate(append_history={"w": [Evaluation(source="c")]}), 3)


@pytest.mark.volume
@settings(max_examples=examples(full=60, quick=8), deadline=None)
@given(session_states(max_objects=4), st.data())
def test_changes_since_reproduces_the_current_wire_form(
    state: SessionState, data: st.DataObject
) -> None:
    """Applying the delta ops to a copy at revision N gives exactly the state at N+k."""
    old_wire = _json_roundtrip(to_wire(state))
    revision = 10
    s = attrs.evolve(state, changes=[])
    for _ in range(data.draw(st.integers(1, 3))):
        names = sorted(s.workspaces) or ["default"]
        ws = data.draw(st.sampled_from(names))
        key = data.draw(st.text(min_size=1, max_size=4))
        value = data.draw(st.none() | st.integers() | st.text(max_size=5))
        revision += 1
        s = StateUpdate(
            patches={"workspaces": {ws: {"variables": {key: value}}}, "session_state": {key: value}}
        ).apply(s, revision)
    ops = changes_since(s, revision, 10)
    assert ops is not None
    wire = old_wire
    for op in ops:
        doc = wire
        for k in op["path"][:-1]:
            doc = doc.setdefault(k, {})
        if op.get("delete"):
            doc.pop(op["path"][-1], None)
        else:
            doc[op["path"][-1]] = op["value"]
    # compare through the model: an omitted default and an explicit empty value
    # are equal; every section, metadata included, comes from the delta
    got = attrs.evolve(from_wire(wire), changes=[])
    assert got == attrs.evolve(s, changes=[])


def test_changes_since_edges() -> None:
    s = base_state()
    assert changes_since(s, 2, 2) == []
    assert changes_since(s, 2, 0) is None
    assert changes_since(s, 2, 3) is None  # a client ahead is not in sync


def test_structure_evaluations_validates() -> None:
    assert structure_evaluations({"w": [{"source": "1"}]}, "append_history")["w"][0].source == "1"
    for bad in ([], {"w": {}}, {"w": [{"nosource": 1}]}, {"w": [{"source": 1}]}):
        with pytest.raises(ValidationError):
            structure_evaluations(bad, "append_history")

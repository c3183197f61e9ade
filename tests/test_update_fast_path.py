"""The fast update path gives exactly what the full model round trip gives.

:meth:`StateUpdate.apply` merges patches into the touched records only when it
can (cost proportional to the patch). Hypothesis generates states and patches
(valid and invalid: dangling references, wrong types, unknown keys, deletions)
and checks that the fast path either declines or produces the same state, down
to the stored bytes, as the full path -- and that invalid updates fail the same
way whichever path sees them.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from state_strategies import json_values, names, object_ids, session_states
from stuisession import _json as jsonutil
from stuisession.errors import ValidationError
from stuisession.state.refs import ref
from stuisession.state.schema import SessionState, to_wire
from stuisession.state.updates import StateUpdate, _apply_fast
from volume import examples

FIELDS = {
    "workspaces": ["variables", "settings", "contents", "history", "bogus"],
    "objects": ["slots", "elements", "class_name", "print_string", "restorable", "serialized"],
    "inspectors": ["object_id", "path", "selected", "scroll", "view", "pinned", "title"],
    "contexts": ["variables", "data", "tool_type", "saved_at"],
}


@st.composite
def patches(draw: st.DrawFn, state: SessionState) -> dict[str, Any]:
    ids = sorted(state.objects) + draw(st.lists(object_ids, max_size=1))
    leaves: Any = st.none() | st.integers() | st.text(max_size=5)
    if ids:
        leaves = leaves | st.sampled_from(ids).map(ref)
    values = json_values(leaves)
    out: dict[str, Any] = {}
    for section in draw(st.sets(st.sampled_from([*FIELDS, "session_state", "preferences"]))):
        if section == "session_state":
            out[section] = draw(st.dictionaries(names, values, min_size=1, max_size=3))
            continue
        if section == "preferences":
            out[section] = draw(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "theme": st.none() | st.text(max_size=4),
                        "history_limit": st.integers(0, 5) | st.just("x"),
                        "extra_key": values,
                    },
                ).filter(bool)
            )
            continue
        existing = sorted(getattr(state, section))
        key_strategy = st.sampled_from(existing) | names if existing else names
        keys = draw(st.lists(key_strategy, min_size=1, max_size=3))
        sec: dict[str, Any] = {}
        for key in keys:
            if draw(st.integers(0, 9)) == 0:
                sec[key] = None  # delete the record
                continue
            fields = draw(st.lists(st.sampled_from(FIELDS[section]), min_size=1, max_size=3))
            rec: dict[str, Any] = {}
            for f in fields:
                if f in ("variables", "settings", "slots", "data"):
                    rec[f] = draw(st.dictionaries(names, values, max_size=3))
                elif f == "object_id":
                    rec[f] = draw(st.sampled_from(ids) if ids else object_ids)
                elif f in ("elements", "history", "path"):
                    rec[f] = draw(st.lists(values, max_size=2))
                else:
                    rec[f] = draw(values)
            sec[key] = rec
        out[section] = sec
    return out


def full_apply(update: StateUpdate, state: SessionState, revision: int) -> SessionState:
    import stuisession.state.updates as updates

    original = updates._apply_fast
    updates._apply_fast = lambda *_: None  # type: ignore[assignment]
    try:
        return update.apply(state, revision)
    finally:
        updates._apply_fast = original


def outcome(fn: Any) -> tuple[str, Any]:
    try:
        return "ok", fn()
    except ValidationError as exc:
        return "error", exc.message


@pytest.mark.volume
@settings(
    max_examples=examples(full=150, quick=12),
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.data())
def test_fast_path_equals_full_round_trip(data: st.DataObject) -> None:
    state = data.draw(session_states())
    patch = data.draw(patches(state))
    replace = frozenset()
    if "session_state" in patch and data.draw(st.booleans()):
        replace = frozenset({"session_state"})  # upstream's default mode
    update = StateUpdate(patches=patch, replace=replace)
    fast = outcome(lambda: update.apply(state, 7))
    full = outcome(lambda: full_apply(update, state, 7))
    assert fast == full
    if fast[0] == "ok":
        assert jsonutil.dumps(to_wire(fast[1])) == jsonutil.dumps(to_wire(full[1]))


def test_one_variable_merge_takes_the_fast_path() -> None:
    state = SessionState().__class__()
    big = StateUpdate(
        patches={"workspaces": {"default": {"variables": {f"v{i}": i for i in range(2000)}}}}
    ).apply(state, 2)
    one = StateUpdate(patches={"workspaces": {"default": {"variables": {"v5": "five"}}}})
    fast = _apply_fast(one, big)
    assert fast is not None
    new, paths = fast
    assert paths == [("workspaces", "default", "variables", "v5")]
    assert new.workspaces["default"].variables["v5"] == "five"
    # copy-on-write: the old state is untouched
    assert big.workspaces["default"].variables["v5"] == 5


@pytest.mark.parametrize(
    "patch",
    [
        {"objects": {"a": None}},  # deleting an object needs a whole-state check
        {"current_workspace": "other"},
        {"workspaces": {"w": ["not", "a", "record"]}},
        {"workspaces": {"w": {"variables": {"x": {"$ref": "missing"}}}}},
        {"workspaces": {"w": {"unknown_field": 1}}},
    ],
)
def test_fast_path_declines(patch: dict[str, Any]) -> None:
    state = StateUpdate(
        patches={"objects": {"a": {"class_name": "A"}}, "workspaces": {"w": {}}}
    ).apply(SessionState(), 2)
    assert _apply_fast(StateUpdate(patches=patch), state) is None


def test_null_for_an_unknown_key_of_a_new_record() -> None:
    # found by Hypothesis: merge_patch drops the null, so the full path creates
    # an empty workspace; the fast path must agree instead of failing
    state = StateUpdate(patches={"objects": {"a": {"class_name": "A"}}}).apply(SessionState(), 2)
    update = StateUpdate(patches={"workspaces": {"0": {"bogus": None}}})
    assert update.apply(state, 3) == full_apply(update, state, 3)
    assert update.apply(state, 3).workspaces["0"].variables == {}

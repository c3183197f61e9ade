"""Issue 4 through the public protocol: typed state, partial updates, conflicts, deltas,
tool contexts, the heavy session, and exact round trips through every store."""

from __future__ import annotations

import json
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from heavy_session import heavy_changes
from state_strategies import json_objects, session_states
from stuisession import FileStore, MemoryStore, ProtocolHandler
from stuisession.codec.snapshot import SnapshotCodec
from stuisession.keys import Keyring
from stuisession.state import lifecycle
from stuisession.state.schema import SessionState, to_wire
from volume import examples


def ok(handler: ProtocolHandler, command: str, **params: Any) -> dict[str, Any]:
    reply = handler.handle({"id": command, "command": command, "parameters": params})
    assert reply["status"] == "success", reply
    result: dict[str, Any] = reply["result"]
    return result


def err(handler: ProtocolHandler, command: str, **params: Any) -> dict[str, Any]:
    reply = handler.handle({"id": command, "command": command, "parameters": params})
    assert reply["status"] == "error", reply
    assert "result" not in reply
    return reply


@pytest.fixture
def handler() -> ProtocolHandler:
    return ProtocolHandler(MemoryStore())


@pytest.fixture
def sid(handler: ProtocolHandler) -> str:
    return str(ok(handler, "create_session", client_id="alice")["session_id"])


GRAPH = {
    "objects": {
        "p": {"class_name": "Point", "print_string": "3@4", "slots": {"x": 3, "y": 4}},
        "a": {"class_name": "Link", "print_string": "a Link", "slots": {"next": {"$ref": "b"}}},
        "b": {"class_name": "Link", "print_string": "a Link", "slots": {"next": {"$ref": "a"}}},
        "s": {"class_name": "Socket", "print_string": "a Socket", "restorable": False},
    },
    "workspaces": {
        "default": {"variables": {"x": {"$ref": "p"}, "y": {"$ref": "p"}, "r": {"$ref": "a"}}}
    },
    "inspectors": {"i1": {"object_id": "a", "path": ["next"], "selected": "next", "pinned": True}},
    "selected_inspector": "i1",
}


def test_typed_state_restores_with_upstream_views(handler: ProtocolHandler, sid: str) -> None:
    ok(
        handler,
        "update_session_state",
        session_id=sid,
        state_data={"workspace": "x := 3@4"},
        changes=GRAPH,
    )
    r = ok(handler, "restore_session", session_id=sid)
    assert r["session_state"] == {"workspace": "x := 3@4"}
    assert r["workspace_context"]["variables"] == ["r", "x", "y"]
    assert r["inspector_state"]["selected_object"] == "a"
    assert r["object_registry"] == {"p": "3@4", "a": "a Link", "b": "a Link", "s": "a Socket"}
    assert r["stale_objects"] == ["s"]
    variables = r["workspace_context"]["workspaces"]["default"]["variables"]
    assert variables["x"] == variables["y"] == {"$ref": "p"}
    assert r["objects"]["b"]["slots"]["next"] == {"$ref": "a"}
    assert r["delta"] is False


def test_dangling_reference_is_refused_and_nothing_changes(
    handler: ProtocolHandler, sid: str
) -> None:
    ok(handler, "update_session_state", session_id=sid, changes=GRAPH)
    before = ok(handler, "restore_session", session_id=sid)
    e = err(
        handler,
        "update_session_state",
        session_id=sid,
        changes={"workspaces": {"default": {"variables": {"z": {"$ref": "ghost"}}}}},
    )
    assert e["error_code"] == "ValidationError"
    assert "ghost" in e["error"]
    e = err(handler, "update_session_state", session_id=sid, changes={"objects": {"p": None}})
    assert e["error_code"] == "ValidationError"  # p is still referenced by x and y
    e = err(handler, "update_session_state", session_id=sid, changes={"bogus": {}})
    assert e["error_code"] == "ValidationError"
    e = err(
        handler,
        "update_session_state",
        session_id=sid,
        changes={"inspectors": {"i1": {"scroll": "far"}}},
    )
    assert e["error_code"] == "ValidationError"
    after = ok(handler, "restore_session", session_id=sid)
    assert after["revision"] == before["revision"]
    assert after["objects"] == before["objects"]


def test_upstream_sections_and_merge(handler: ProtocolHandler, sid: str) -> None:
    ok(
        handler,
        "update_session_state",
        session_id=sid,
        state_data={"a": 1, "b": {"c": 2}},
        workspace_context={"variables": ["x"], "note": "kept"},
        inspector_state={"selected_object": "obj_7"},
        object_registry={"obj_7": "a SmallInteger(7)"},
    )
    ok(
        handler,
        "update_session_state",
        session_id=sid,
        state_data={"b": {"c": None, "d": 3}},
        mode="merge",
    )
    r = ok(handler, "restore_session", session_id=sid)
    assert r["session_state"] == {"a": 1, "b": {"d": 3}}
    assert r["workspace_context"]["variables"] == ["x"]
    assert r["workspace_context"]["note"] == "kept"
    assert r["inspector_state"]["selected_object"] == "obj_7"
    assert r["object_registry"] == {"obj_7": "a SmallInteger(7)"}
    e = err(handler, "update_session_state", session_id=sid, object_registry={"o": 5})
    assert e["error_code"] == "ValidationError"


def test_append_history_counts_evaluations(handler: ProtocolHandler, sid: str) -> None:
    ok(handler, "update_session_state", session_id=sid, changes={"objects": GRAPH["objects"]})
    ok(
        handler,
        "update_session_state",
        session_id=sid,
        client_version="1.2.3",
        append_history={
            "default": [
                {
                    "source": "3@4",
                    "result": {"$ref": "p"},
                    "printed": "3@4",
                    "duration_ms": 1.5,
                    "mode": "Display",
                }
            ]
        },
    )
    r = ok(handler, "restore_session", session_id=sid)
    history = r["workspace_context"]["workspaces"]["default"]["history"]
    assert history[0]["result"] == {"$ref": "p"}
    assert r["metadata"]["evaluations"] == 1
    assert r["metadata"]["updates"] == 2
    assert r["metadata"]["last_client_version"] == "1.2.3"
    e = err(
        handler, "update_session_state", session_id=sid, append_history={"default": [{"src": 1}]}
    )
    assert e["error_code"] == "ValidationError"


def test_stale_base_revision_merges_disjoint_and_conflicts_on_overlap(
    handler: ProtocolHandler, sid: str
) -> None:
    base = ok(
        handler,
        "update_session_state",
        session_id=sid,
        changes={"workspaces": {"default": {"variables": {"x": 1, "y": 2}}}},
    )["revision"]
    ok(
        handler,
        "update_session_state",
        session_id=sid,
        base_revision=base,
        changes={"workspaces": {"default": {"variables": {"x": 10}}}},
    )
    # the second terminal is still at `base` and touches a different key: merged
    merged = ok(
        handler,
        "update_session_state",
        session_id=sid,
        base_revision=base,
        changes={"workspaces": {"default": {"variables": {"y": 20}}}},
    )
    assert merged["revision"] == base + 2
    # ... and the same key: conflict carrying the current revision
    e = err(
        handler,
        "update_session_state",
        session_id=sid,
        base_revision=base,
        changes={"workspaces": {"default": {"variables": {"x": 99}}}},
    )
    assert e["error_code"] == "Conflict"
    assert e["details"]["current_revision"] == base + 2
    r = ok(handler, "restore_session", session_id=sid)
    assert r["workspace_context"]["workspaces"]["default"]["variables"] == {"x": 10, "y": 20}


def test_restore_since_revision_returns_only_the_delta(handler: ProtocolHandler, sid: str) -> None:
    first = ok(handler, "update_session_state", session_id=sid, changes=GRAPH)
    held, lineage = first["revision"], first["lineage"]
    ok(
        handler,
        "update_session_state",
        session_id=sid,
        changes={"workspaces": {"default": {"variables": {"n": 42}}}},
    )
    d = ok(handler, "restore_session", session_id=sid, since_revision=held, lineage=lineage)
    assert d["delta"] is True
    assert d["lineage"] == lineage
    assert "session_state" not in d
    paths = [op["path"] for op in d["changes"]]
    assert ["workspace_context", "workspaces", "default", "variables", "n"] in paths
    # the server-kept counters moved too: the delta carries them
    assert ["metadata"] in paths
    assert all(p[0] in ("workspace_context", "metadata") for p in paths)
    assert (
        ok(
            handler,
            "restore_session",
            session_id=sid,
            since_revision=d["revision"],
            lineage=lineage,
        )["changes"]
        == []
    )
    full = ok(
        handler, "restore_session", session_id=sid, since_revision=0, lineage=lineage
    )  # log doesn't reach back
    assert full["delta"] is False and "session_state" in full
    assert full["delta_reason"] == "window"
    e = err(handler, "restore_session", session_id=sid, since_revision="1")
    assert e["error_code"] == "ValidationError"


def test_tool_contexts(handler: ProtocolHandler, sid: str) -> None:
    ok(handler, "update_session_state", session_id=sid, changes={"objects": GRAPH["objects"]})
    saved = ok(
        handler,
        "save_context",
        session_id=sid,
        tool_id="ws-1",
        tool_type="workspace",
        variables={"a": {"$ref": "p"}, "b": 2},
        context={"text": "a := 3@4"},
    )
    assert saved["saved"] is True
    ok(
        handler,
        "save_context",
        session_id=sid,
        tool_id="dbg-1",
        tool_type="debugger",
        context={"frame": 3},
    )
    loaded = ok(handler, "load_context", session_id=sid, tool_id="ws-1")
    assert loaded["loaded"] is True
    assert loaded["context"]["variables"] == {"a": {"$ref": "p"}, "b": 2}
    assert loaded["context"]["data"] == {"text": "a := 3@4"}
    # replace drops old variables; merge keeps them
    ok(handler, "save_context", session_id=sid, tool_id="ws-1", variables={"c": 3})
    assert ok(handler, "load_context", session_id=sid, tool_id="ws-1")["context"]["variables"] == {
        "c": 3
    }
    ok(handler, "save_context", session_id=sid, tool_id="ws-1", variables={"d": 4}, mode="merge")
    assert ok(handler, "load_context", session_id=sid, tool_id="ws-1")["context"]["variables"] == {
        "c": 3,
        "d": 4,
    }
    summary = ok(handler, "get_context_summary", session_id=sid)
    assert [c["tool_id"] for c in summary["contexts"]] == ["dbg-1", "ws-1"]
    assert summary["object_count"] == 4 and summary["stale_object_count"] == 1
    one = ok(handler, "get_context_summary", session_id=sid, tool_id="ws-1")
    assert one["context_count"] == 1 and one["contexts"][0]["variables"] == ["c", "d"]
    assert ok(handler, "clear_context", session_id=sid, tool_id="ws-1")["cleared"] == ["ws-1"]
    assert ok(handler, "load_context", session_id=sid, tool_id="ws-1")["loaded"] is False
    assert ok(handler, "clear_context", session_id=sid)["cleared"] == ["dbg-1"]
    assert ok(handler, "get_context_summary", session_id=sid)["context_count"] == 0
    assert err(handler, "save_context", session_id=sid)["error_code"] == "ValidationError"
    assert (
        err(
            handler, "save_context", session_id=sid, tool_id="t", variables={"v": {"$ref": "nope"}}
        )["error_code"]
        == "ValidationError"
    )
    assert (
        err(handler, "load_context", session_id=sid, tool_id="")["error_code"] == "ValidationError"
    )
    assert (
        err(handler, "save_context", session_id=sid, tool_id="t", mode="x")["error_code"]
        == "ValidationError"
    )
    r = ok(handler, "restore_session", session_id=sid)
    assert r["metadata"]["commands_run"] >= 6


def test_size_limit_names_the_part() -> None:
    from stuisession import Policy

    h = ProtocolHandler(MemoryStore(), Policy(max_snapshot_size=4096))
    s = ok(h, "create_session", client_id="c")["session_id"]
    import secrets

    noise = secrets.token_hex(8000)  # incompressible
    e = err(
        h, "update_session_state", session_id=s, changes={"objects": {"o": {"print_string": noise}}}
    )
    assert e["error_code"] == "StateTooLarge"
    parts = e["details"]["parts"]
    assert max(parts, key=parts.get) in ("objects", "object_registry")
    assert ok(h, "get_session_info", session_id=s)["revision"] == 1


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_objects())
def test_state_data_comes_back_equal_as_json(state_data: dict[str, Any]) -> None:
    h = ProtocolHandler(MemoryStore())
    s = ok(h, "create_session", client_id="c")["session_id"]
    ok(h, "update_session_state", session_id=s, state_data=state_data)
    wire = json.loads(
        h.handle_wire(
            json.dumps({"id": 1, "command": "restore_session", "parameters": {"session_id": s}})
        )
    )
    assert wire["result"]["session_state"] == json.loads(json.dumps(state_data))


def _stores(tmp: Path) -> list[Any]:
    ring = Keyring.generate()
    # a directory per keyring: a file store refuses a keyring its format.json was not sealed with
    directory = tempfile.mkdtemp(dir=tmp)
    return [MemoryStore(SnapshotCodec(ring)), FileStore(directory, keyring=ring, fsync=False)]


@pytest.mark.volume
@settings(
    max_examples=examples(full=40, quick=12),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(session_states())
def test_arbitrary_graphs_roundtrip_through_every_store(
    tmp_path: Path, state: SessionState
) -> None:
    for store in _stores(tmp_path):
        session = lifecycle.new_session("c", now=1000.0, timeout=3600, state=state)
        store.create(session)
        assert store.load(session.session_id) == session
        # and the bytes a restore splices are exactly the wire form
        snap = store.load_snapshot(session.session_id)
        assert json.loads(snap.state_json()) == json.loads(json.dumps(to_wire(state)))
        store.delete(session.session_id)
        store.close()


@pytest.fixture(scope="module")
def heavy() -> tuple[dict[str, Any], dict[str, Any]]:
    return heavy_changes()


@pytest.mark.slow
def test_heavy_session_fits_restores_exactly_and_updates_partially(
    tmp_path: Path, heavy: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    changes, history = heavy
    store = FileStore(tmp_path, fsync=False)
    h = ProtocolHandler(store)
    s = ok(h, "create_session", client_id="heavy")["session_id"]
    ok(h, "update_session_state", session_id=s, changes=changes, append_history=history)
    size = len(store._get(s) or b"")
    assert size < 1024 * 1024, size  # the seed's per-session limit
    r = ok(h, "restore_session", session_id=s)
    ws = r["workspace_context"]["workspaces"]["default"]
    assert ws["variables"] == changes["workspaces"]["default"]["variables"]
    assert len(ws["history"]) == 1000
    assert len(r["objects"]) == 5000 and len(r["inspector_state"]["inspectors"]) == 50
    for oid, rec in changes["objects"].items():
        got = r["objects"][oid]
        assert got["slots"] == rec["slots"]
        assert got.get("elements", []) == rec.get("elements", [])
        assert got.get("restorable", True) == rec.get("restorable", True)
    base = r["revision"]
    # one variable changes: the request carries only that variable
    request = {
        "session_id": s,
        "base_revision": base,
        "changes": {"workspaces": {"default": {"variables": {"var1": {"$ref": "obj_2"}}}}},
    }
    assert len(json.dumps(request)) < 300
    ok(h, "update_session_state", **request)
    # a second terminal, also at `base`, changes another variable concurrently
    results: list[dict[str, Any]] = []

    def other(var: str) -> None:
        results.append(
            h.handle(
                {
                    "id": var,
                    "command": "update_session_state",
                    "parameters": {
                        "session_id": s,
                        "base_revision": base,
                        "changes": {"workspaces": {"default": {"variables": {var: var}}}},
                    },
                }
            )
        )

    threads = [threading.Thread(target=other, args=(v,)) for v in ("var2", "var3")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(x["status"] == "success" for x in results), results
    final = ok(h, "restore_session", session_id=s)["workspace_context"]["workspaces"]["default"][
        "variables"
    ]
    assert (
        final["var1"] == {"$ref": "obj_2"} and final["var2"] == "var2" and final["var3"] == "var3"
    )
    assert final["var4"] == changes["workspaces"]["default"]["variables"]["var4"]

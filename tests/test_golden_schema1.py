"""Schema-1 golden snapshots keep loading (through the 1 -> 2 migration) in every release.

The files in tests/fixtures/schema1/ were written once by the schema-1 code and
are never regenerated. Never edit them; if this test fails, a change broke
backward compatibility of the session format.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stuisession import FileStore, ManualClock, Policy, ProtocolHandler
from stuisession.codec.snapshot import SnapshotCodec
from stuisession.keys import Keyring
from stuisession.state.schema import to_wire

HERE = Path(__file__).parent / "fixtures" / "schema1"
EXPECTED = json.loads((HERE / "expected.json").read_text())
# git does not keep file modes, so the test-only key is read as text, not as a key file
RING = Keyring.from_json((HERE / "keyring.json").read_text())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_schema1_snapshot_loads(name: str) -> None:
    exp = EXPECTED[name]
    snap = SnapshotCodec(RING).open(
        (HERE / name).read_bytes(), expected_session_id=exp["session_id"]
    )
    assert snap.schema_version == 1
    session = snap.session()
    assert session.session_id == exp["session_id"]
    assert session.client_id == exp["client_id"]
    assert session.revision == exp["revision"]
    assert session.status.value == exp["status"]
    assert session.created_at == exp["created_at"]
    v1 = exp["state_v1"]
    wire = to_wire(session.state)
    # upstream views come back exactly as schema 1 stored them
    assert wire["session_state"] == v1["session_state"]
    assert wire["object_registry"] == v1["object_registry"]
    assert wire["workspace_context"]["variables"] == v1["workspace_context"].get("variables", [])
    for key, value in v1["workspace_context"].items():
        if key != "variables":
            assert wire["workspace_context"][key] == value
    if v1["workspace_context"].get("variables"):
        current = wire["workspace_context"]["current_workspace"]
        variables = wire["workspace_context"]["workspaces"][current]["variables"]
        assert variables == dict.fromkeys(v1["workspace_context"]["variables"])
    assert wire["inspector_state"]["selected_object"] == v1["inspector_state"].get(
        "selected_object"
    )
    for key, value in v1["inspector_state"].items():
        if key != "selected_object":
            assert wire["inspector_state"][key] == value
    # objects from schema 1 had no serialized form: they come back as placeholders
    assert wire["stale_objects"] == sorted(v1["object_registry"])
    for key, value in v1["preferences"].items():
        assert wire["preferences"][key] == value
    if "client_info" in v1["metadata"]:
        assert session.state.metadata.client_info == v1["metadata"]["client_info"]
    if "client_version" in v1["metadata"]:
        assert session.state.metadata.last_client_version == v1["metadata"]["client_version"]


def test_schema1_snapshot_restores_through_the_protocol(tmp_path: Path) -> None:
    """A store written by schema-1 code is served by this release, and upgraded on write."""
    store = FileStore(tmp_path, keyring=RING)
    name = "upstream-shapes.snap"
    sid = EXPECTED[name]["session_id"]
    target = tmp_path / "sessions"
    # place the old file where the store keeps that session
    path = Path(store._paths(sid).current)  # the test reaches into the layout on purpose
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((HERE / name).read_bytes())
    assert target in path.parents
    handler = ProtocolHandler(
        store, Policy(session_timeout=3600), clock=ManualClock(EXPECTED[name]["last_modified"] + 10)
    )
    reply = handler.handle(
        {"id": "r", "command": "restore_session", "parameters": {"session_id": sid}}
    )
    assert reply["status"] == "success", reply
    assert reply["result"]["session_state"] == EXPECTED[name]["state_v1"]["session_state"]
    upd = handler.handle(
        {
            "id": "u",
            "command": "update_session_state",
            "parameters": {"session_id": sid, "state_data": {"new": True}, "mode": "merge"},
        }
    )
    assert upd["status"] == "success", upd
    assert store.load_snapshot(sid).schema_version == 2

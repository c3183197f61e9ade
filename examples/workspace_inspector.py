"""A workspace + inspector scenario, end to end, through ProtocolHandler.

Run:  python examples/workspace_inspector.py [STORE_DIR]

A client evaluates code, binds two variables to one object, builds a cycle,
opens an inspector, then "crashes". A second client (another terminal of the
same user) changes a different variable from an older revision and is merged
automatically. A restarted bridge restores everything; the first client then
catches up with only what changed since the revision it held.
"""

from __future__ import annotations

import json
import sys
import tempfile
from typing import Any

from stuisession import FileStore, ProtocolHandler


def call(handler: ProtocolHandler, command: str, **parameters: Any) -> dict[str, Any]:
    reply = handler.handle({"id": command, "command": command, "parameters": parameters})
    if reply["status"] != "success":
        raise SystemExit(f"{command} failed: {reply['error_type']}: {reply['error']}")
    result: dict[str, Any] = reply["result"]
    return result


def main(store_dir: str) -> dict[str, Any]:
    handler = ProtocolHandler(FileStore(store_dir))
    sid = call(handler, "create_session", client_id="alice@laptop")["session_id"]

    # Evaluate `p := 3@4. q := p.` and a two-node ring; register what the image showed.
    update = call(
        handler,
        "update_session_state",
        session_id=sid,
        state_data={"workspace": "p := 3@4. q := p."},
        changes={
            "objects": {
                "obj_1": {
                    "class_name": "Point",
                    "print_string": "(3@4)",
                    "serialized": "Point{#x:3,#y:4}",
                    "serialized_format": "ston",
                    "slots": {"x": 3, "y": 4},
                },
                "obj_2": {
                    "class_name": "Link",
                    "print_string": "a Link",
                    "slots": {"next": {"$ref": "obj_3"}},
                },
                "obj_3": {
                    "class_name": "Link",
                    "print_string": "a Link",
                    "slots": {"next": {"$ref": "obj_2"}},
                },
                "obj_4": {"class_name": "Socket", "print_string": "a Socket", "restorable": False},
            },
            "workspaces": {
                "default": {
                    "variables": {
                        "p": {"$ref": "obj_1"},
                        "q": {"$ref": "obj_1"},
                        "ring": {"$ref": "obj_2"},
                        "sock": {"$ref": "obj_4"},
                    }
                }
            },
            "inspectors": {
                "insp-1": {
                    "object_id": "obj_2",
                    "path": ["next"],
                    "selected": "next",
                    "view": "raw",
                    "pinned": True,
                }
            },
            "selected_inspector": "insp-1",
        },
        append_history={
            "default": [
                {"source": "p := 3@4. q := p.", "result": {"$ref": "obj_1"}, "printed": "(3@4)"}
            ]
        },
    )
    held_revision = update["revision"]

    # The second terminal, still at the revision before, sets another variable.
    call(
        handler,
        "update_session_state",
        session_id=sid,
        base_revision=held_revision,
        changes={"workspaces": {"default": {"variables": {"n": 42}}}},
    )
    handler.store.close()

    # The bridge restarts; the first terminal reconnects.
    handler = ProtocolHandler(FileStore(store_dir))
    full = call(handler, "restore_session", session_id=sid)
    variables = full["workspace_context"]["workspaces"]["default"]["variables"]
    assert variables["p"] == variables["q"] == {"$ref": "obj_1"}  # one object, two names
    assert full["objects"]["obj_3"]["slots"]["next"] == {"$ref": "obj_2"}  # the cycle
    assert full["stale_objects"] == ["obj_4"]
    delta = call(handler, "restore_session", session_id=sid, since_revision=held_revision)
    print(
        json.dumps(
            {
                "revision": full["revision"],
                "variables": full["workspace_context"]["variables"],
                "selected_object": full["inspector_state"]["selected_object"],
                "stale_objects": full["stale_objects"],
                "delta_since_held_revision": delta["changes"],
            },
            indent=2,
        )
    )
    call(handler, "close_session", session_id=sid)  # leave no session behind
    handler.store.close()
    return full


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(sys.argv[1])
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(tmp)

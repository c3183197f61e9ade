"""Embed ProtocolHandler in a host program: create, update, "crash", restore.

Run:  python examples/embed.py [STORE_DIR]

The handler is sans-IO: the host hands it one request and gets one reply.
Here the "transport" is a function call; examples/stdio_bridge.py puts the same
handler behind stdin/stdout, and `stuisession serve` behind ZeroMQ.
"""

from __future__ import annotations

import json
import sys
import tempfile
from typing import Any, cast

from stuisession import CreateSessionResult, FileStore, ProtocolHandler, RestoreSessionResult


def call(handler: ProtocolHandler, request_id: str, command: str, **parameters: Any) -> Any:
    """The ``result`` of one command; exits with the error otherwise."""
    reply = handler.handle({"id": request_id, "command": command, "parameters": parameters})
    if reply["status"] != "success":
        raise SystemExit(f"{command} failed: {reply['error_type']}: {reply['error']}")
    return reply["result"]


def main(store_dir: str) -> RestoreSessionResult:
    handler = ProtocolHandler(FileStore(store_dir))
    # the typed shapes let mypy catch a misspelt key such as created["sesion_id"]
    created = cast(
        CreateSessionResult, call(handler, "c1", "create_session", client_id="tui-laptop-01")
    )
    session_id = created["session_id"]
    call(
        handler,
        "u1",
        "update_session_state",
        session_id=session_id,
        state_data={"workspace": "x := 3 + 4.", "inspector": "open"},
        workspace_context={"variables": ["x"]},
        object_registry={"obj_7": "a SmallInteger(7)"},
    )
    store = handler.store
    store.close()

    # A new handler on the same directory: what a restarted bridge sees.
    handler = ProtocolHandler(FileStore(store_dir))
    restored = cast(
        RestoreSessionResult, call(handler, "r1", "restore_session", session_id=session_id)
    )
    print(json.dumps(restored, indent=2, ensure_ascii=False))
    # done: close the session, so that running this again never meets the client's limit
    call(handler, "x1", "close_session", session_id=session_id)
    handler.store.close()
    return restored


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(sys.argv[1])
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(tmp)

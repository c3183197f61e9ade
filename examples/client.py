"""A STUI-style client of the bridge: create, update, disconnect, reconnect, restore.

Like the upstream Rust client it uses a plain ZeroMQ REQ socket, one JSON frame
per message, and a receive timeout on every request so it never hangs.

Run a bridge first (``make run`` or ``stuisession serve``), then::

    python examples/client.py                      # the whole flow (--demo)
    python examples/client.py --state-file s.json create
    python examples/client.py --state-file s.json update --data '{"workspace": "x := 1."}'
    python examples/client.py --state-file s.json restore

``--state-file`` remembers the session id (and resume token) between runs, as
the TUI keeps its session file. Exit status: 0 ok, 1 error or no reply.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import zmq

_ids = itertools.count(1)


class ClientError(Exception):
    """The request failed (error reply or no reply); the message says which."""


class Connection:
    """One REQ socket to the bridge. A REQ socket that timed out is unusable: reconnect."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, timeout: float) -> None:
        self.endpoint = endpoint
        self.sock = ctx.socket(zmq.REQ)
        ms = int(timeout * 1000)
        self.sock.setsockopt(zmq.RCVTIMEO, ms)
        self.sock.setsockopt(zmq.SNDTIMEO, ms)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def call(self, command: str, **parameters: Any) -> dict[str, Any]:
        """Send one request and return its ``result``; raise ClientError otherwise."""
        request_id = f"{command}-{os.getpid()}-{next(_ids)}"
        request = {"id": request_id, "command": command, "parameters": parameters}
        try:
            self.sock.send(json.dumps(request).encode("utf-8"))
            reply = json.loads(self.sock.recv())
        except zmq.Again:
            raise ClientError(f"{command}: no reply from {self.endpoint} in time") from None
        if reply.get("id") != request_id:
            raise ClientError(f"{command}: reply id {reply.get('id')!r} != {request_id!r}")
        if reply.get("status") != "success":
            raise ClientError(f"{command}: {reply.get('error_type')}: {reply.get('error')}")
        result: dict[str, Any] = reply["result"]
        return result

    def close(self) -> None:
        self.sock.close()


# -- the remembered session ---------------------------------------------------------------
def load_saved(path: Path | None) -> dict[str, Any]:
    if path is None or not path.exists():
        raise ClientError("no saved session: run `create` first (with the same --state-file)")
    saved: dict[str, Any] = json.loads(path.read_text("utf-8"))
    return saved


def save(path: Path | None, created: dict[str, Any]) -> None:
    if path is None:
        return
    saved = {k: created[k] for k in ("session_id", "client_id", "resume_token") if k in created}
    # the session id is a bearer secret: keep the file private
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(saved, f)


def creds(saved: dict[str, Any]) -> dict[str, Any]:
    """What identifies the session on every request (works in compat and strict mode)."""
    keys = ("session_id", "client_id", "resume_token")
    return {k: saved[k] for k in keys if saved.get(k)}


# -- commands -----------------------------------------------------------------------------
def do_create(conn: Connection, args: argparse.Namespace) -> dict[str, Any]:
    created = conn.call("create_session", client_id=args.client_id)
    save(args.state_file, created)
    print(f"created {created['session_id']} for {created['client_id']}")
    return created


def do_update(conn: Connection, saved: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    updated = conn.call("update_session_state", **creds(saved), state_data=state)
    print(f"updated: revision {updated['revision']}, last_modified {updated['last_modified']}")
    return updated


def do_restore(conn: Connection, saved: dict[str, Any]) -> dict[str, Any]:
    restored = conn.call("restore_session", **creds(saved))
    print(f"restored revision {restored['revision']}:")
    print(json.dumps(restored.get("session_state", {}), indent=2, ensure_ascii=False))
    return restored


def do_close(conn: Connection, path: Path | None) -> None:
    conn.call("close_session", **creds(load_saved(path)))
    if path is not None:
        path.unlink()  # it held a bearer secret of a session that is now closed
    print("closed; the state file is removed")


def demo(ctx: zmq.Context[zmq.Socket[bytes]], args: argparse.Namespace) -> None:
    conn = Connection(ctx, args.endpoint, args.timeout)
    try:
        saved = do_create(conn, args)
        do_update(conn, saved, {"workspace": "x := 3 + 4.", "inspector": "closed"})
        state = {"workspace": "x := 3 + 4.\ny := x * 6.", "inspector": "open"}
        last = do_update(conn, saved, state)
    finally:
        conn.close()  # "network drop": the next socket is a brand-new connection
    print("disconnected; reconnecting with a new socket")
    conn = Connection(ctx, args.endpoint, args.timeout)
    try:
        restored = do_restore(conn, saved)
        if restored.get("session_state") != state or restored["revision"] != last["revision"]:
            raise ClientError("restored state differs from the last update")
        print("ok: the restored state and revision match the last update")
        if args.state_file is None:
            # nobody can come back to it: free the slot (5 sessions per client by default)
            conn.call("close_session", **creds(saved))
    finally:
        conn.close()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--endpoint", default="tcp://127.0.0.1:5555")
    p.add_argument("--client-id", default="example-client")
    p.add_argument("--state-file", type=Path, help="remember the session id here")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for each reply")
    p.add_argument("--demo", action="store_true", help="the whole flow (default)")
    sub = p.add_subparsers(dest="action")
    sub.add_parser("create", help="create a session and remember it")
    up = sub.add_parser("update", help="replace the remembered session's state")
    up.add_argument(
        "--data",
        type=json.loads,
        help='state_data as a JSON object (default: {"workspace": ..., "saved_at": now})',
    )
    sub.add_parser("restore", help="restore the remembered session and print its state")
    sub.add_parser("close", help="close the remembered session and delete the state file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ctx = zmq.Context()
    try:
        if args.action is None or args.demo:
            demo(ctx, args)
            return 0
        conn = Connection(ctx, args.endpoint, args.timeout)
        try:
            if args.action == "create":
                do_create(conn, args)
            elif args.action == "update":
                data = (
                    args.data
                    if args.data is not None
                    else {
                        "workspace": "Transcript show: 'hello'.",
                        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    }
                )
                if not isinstance(data, dict):
                    raise ClientError("--data must be a JSON object")
                do_update(conn, load_saved(args.state_file), data)
            elif args.action == "close":
                do_close(conn, args.state_file)
            else:
                do_restore(conn, load_saved(args.state_file))
        finally:
            conn.close()
        return 0
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        ctx.term()


if __name__ == "__main__":
    sys.exit(main())

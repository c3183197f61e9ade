"""The ``status`` sub-command: ask a running bridge for its statistics."""

from __future__ import annotations

import argparse
import json
from typing import Any

from stuisession.cli._common import (
    DEFAULT_BIND,
    EXIT_OK,
    Fail,
    UsageError,
    clean,
    common_parent,
    iso,
    json_parent,
    kv_table,
    positive_float,
    print_json,
    table,
)


def register_status(sub: Any) -> None:
    """Add the ``status`` parser(s) to *sub*."""
    p = sub.add_parser(
        "status",
        parents=[common_parent(), json_parent()],
        help="ask a running bridge for its statistics",
        description="Send get_session_statistics to a running bridge and print the reply. "
        "Exit 1 if there is no reply within --timeout.",
    )
    p.add_argument(
        "--endpoint",
        default=DEFAULT_BIND,
        metavar="ENDPOINT",
        help=f"the bridge's ZeroMQ endpoint (default {DEFAULT_BIND})",
    )
    p.add_argument(
        "--timeout",
        type=positive_float,
        default=2.0,
        metavar="SECONDS",
        help="seconds to wait for the reply (default 2)",
    )
    p.add_argument(
        "--curve-server-key",
        metavar="FILE",
        help="connect with CurveZMQ: the bridge's public key file (server.key)",
    )
    p.add_argument(
        "--curve-secret",
        metavar="FILE",
        help="this client's key pair (.key_secret file, mode 0600), with --curve-server-key",
    )
    p.set_defaults(handler=cmd_status, parser=p)


# -- status -----------------------------------------------------------------------------
def cmd_status(args: argparse.Namespace) -> int:
    try:
        from stuisession.client import req_socket, zmq_module

        zmq = zmq_module()
    except ImportError as exc:
        raise Fail(str(exc)) from None
    request = {"id": "stuisession-status", "command": "get_session_statistics", "parameters": {}}
    curve = _status_curve(args)
    ctx = zmq.Context()
    try:
        try:
            sock = req_socket(ctx, args.endpoint, args.timeout, curve=curve)
        except zmq.ZMQError as exc:
            raise UsageError(f"invalid --endpoint {args.endpoint!r}: {exc}") from None
        try:
            sock.send(json.dumps(request).encode())
            raw = sock.recv()
        except zmq.Again:
            raise Fail(
                f"no reply from {args.endpoint} within {args.timeout:g} s "
                "(is the bridge running there?)"
            ) from None
    finally:
        ctx.destroy(linger=0)
    try:
        reply = json.loads(raw)
    except ValueError:
        raise Fail(f"the reply from {args.endpoint} is not JSON") from None
    if not isinstance(reply, dict) or reply.get("status") != "success":
        error = reply.get("error") if isinstance(reply, dict) else None
        if not isinstance(error, str):
            error = "unexpected reply"
        kind = reply.get("error_type") if isinstance(reply, dict) else None
        prefix = f"{kind}: " if isinstance(kind, str) else ""
        raise Fail(f"{args.endpoint} answered with an error: {prefix}{clean(error[:200])}")
    result = reply.get("result")
    if not isinstance(result, dict):
        raise Fail(f"the reply from {args.endpoint} has no result")
    if args.json:
        print_json(result)
        return EXIT_OK
    scalars = [(k, v) for k, v in result.items() if not isinstance(v, (list, dict))]
    print(kv_table(scalars))
    connections = result.get("connections")
    if isinstance(connections, list):
        print()
        if not connections:
            print("no connections")
        else:
            rows = [
                [
                    c.get("identity"),
                    c.get("client_id"),
                    iso(c["connected_since"])
                    if isinstance(c.get("connected_since"), (int, float))
                    else c.get("connected_since"),
                    c.get("idle_seconds"),
                    c.get("requests"),
                    c.get("sessions"),
                ]
                for c in connections
                if isinstance(c, dict)
            ]
            headers = ["IDENTITY", "CLIENT", "CONNECTED SINCE", "IDLE (S)", "REQUESTS", "SESSIONS"]
            print(table(headers, rows, right=[3, 4, 5]))
    return EXIT_OK


def _status_curve(args: argparse.Namespace) -> tuple[bytes, ...] | None:
    """``(server public, client secret, client public)`` for ``req_socket``, or None."""
    if (args.curve_server_key is None) != (args.curve_secret is None):
        raise UsageError("--curve-server-key and --curve-secret go together")
    if args.curve_server_key is None:
        return None
    from stuisession.bridge.curve import load_keypair, load_public_key

    public, secret = load_keypair(args.curve_secret)
    return (load_public_key(args.curve_server_key), bytes(secret), bytes(public))


def register(sub: Any) -> None:
    """Add this module's sub-commands to *sub* (an argparse sub-parsers action)."""
    register_status(sub)

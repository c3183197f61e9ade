"""CURVE with worker processes: the parent authenticates, each message carries its caller.

``serve --curve-secret`` on several cores runs workers behind a parent that owns the
public socket and its ZAP handler (``bridge/supervisor.py``). The worker trusts the
caller frame its parent puts in front of each message; these tests pin down that frame
(a damaged one binds to nothing, never to everything) and that a worker's bridge
decides access by it. The whole path, with real keys and a real ``serve``, is
``tests/e2e/test_curve_e2e.py`` (parametrized over one process and workers).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from hypothesis import given
from hypothesis import strategies as st

from stuisession import MemoryStore, Policy, ProtocolHandler
from stuisession.bridge.curve import NOBODY, caller_frame, caller_from_frame
from stuisession.bridge.server import BridgeServer
from stuisession.bridge.supervisor import BROKER_ID, _broker_context
from stuisession.security.identity import Caller

ALICE_KEY = "A" * 40
MALLORY_KEY = "M" * 40


def test_caller_frame_carries_key_bindings_and_operator_flag() -> None:
    alice = Caller.curve(ALICE_KEY, frozenset({"alice", "alice-2"}), operator=True)
    frame = caller_frame(alice)
    assert json.loads(frame) == {
        "key": ALICE_KEY,
        "client_ids": ["alice", "alice-2"],
        "operator": True,
    }
    back = caller_from_frame(frame)
    assert back == alice
    assert back.authenticated and back.may_act_as("alice-2") and not back.may_act_as("bob")


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[]",
        b"null",
        b'{"key": "K", "client_ids": null, "operator": false}',  # unrestricted: refused
        b'{"key": "", "client_ids": ["alice"], "operator": false}',
        b'{"key": "K", "client_ids": "alice", "operator": false}',
        b'{"key": "K", "client_ids": [1], "operator": false}',
        b'{"key": "K", "client_ids": ["alice"], "operator": "yes"}',
        b'{"key": "K", "client_ids": ["alice"]}',
    ],
)
def test_an_unreadable_caller_frame_binds_to_nothing(frame: bytes) -> None:
    caller = caller_from_frame(frame)
    assert caller == NOBODY
    assert caller.client_ids == frozenset() and not caller.may_act_as("alice")
    assert not caller.operator and not caller.trusted


@given(st.binary(max_size=200))
def test_no_caller_frame_ever_yields_an_unrestricted_caller(frame: bytes) -> None:
    caller = caller_from_frame(frame)
    # restricted to the ids it names (never None: "not restricted"), never trusted
    assert caller.client_ids is not None and not caller.trusted and caller.authenticated


# -- a worker's bridge, fed as its parent feeds it -------------------------------------------
@pytest.fixture
def worker(tmp_path: Path) -> Iterator[str]:
    context = _broker_context()
    handler = ProtocolHandler(MemoryStore(), Policy(rate_limit=None))
    endpoint = f"ipc://{tmp_path}/worker-0"
    server = BridgeServer(handler, endpoint, context=context, forwarded_callers=True)
    with server:
        t = threading.Thread(target=server.serve_forever, daemon=True)
        t.start()
        try:
            yield endpoint
        finally:
            server.stop()
            t.join(10)
    context.term()


def _broker(ctx: zmq.Context[Any], endpoint: str) -> zmq.Socket[Any]:
    """A socket standing in for the parent's DEALER (the test double of the supervisor)."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, BROKER_ID)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 10_000)
    sock.connect(endpoint)
    return sock


def _ask(sock: zmq.Socket[Any], caller: bytes, command: str, **params: Any) -> dict[str, Any]:
    body = json.dumps({"id": command, "command": command, "parameters": params}).encode()
    sock.send_multipart([caller, b"client-connection-1", b"", body])
    ident, empty, reply = sock.recv_multipart()
    assert (ident, empty) == (b"client-connection-1", b"")  # the envelope comes back as sent
    answer: dict[str, Any] = json.loads(reply)
    return answer


def test_a_worker_decides_access_by_the_caller_its_parent_forwarded(
    worker: str,
) -> None:
    endpoint = worker
    ctx = zmq.Context()
    try:
        broker = _broker(ctx, endpoint)
        alice = caller_frame(Caller.curve(ALICE_KEY, frozenset({"alice"})))
        mallory = caller_frame(Caller.curve(MALLORY_KEY, frozenset({"mallory"})))
        made = _ask(broker, alice, "create_session", client_id="alice")
        assert made["status"] == "success", made
        sid = made["result"]["session_id"]
        # the same connection, another authenticated caller: bound to "mallory" only
        for command, params in [
            ("restore_session", {"session_id": sid}),
            ("create_session", {"client_id": "alice"}),
            ("list_client_sessions", {"client_id": "alice"}),
        ]:
            refused = _ask(broker, mallory, command, **params)
            assert refused["status"] == "error", (command, refused)
        # a damaged caller frame is bound to nothing
        for command, params in [
            ("restore_session", {"session_id": sid}),
            ("create_session", {"client_id": "alice"}),
        ]:
            refused = _ask(broker, b"{damaged", command, **params)
            assert refused["status"] == "error", (command, refused)
        restored = _ask(broker, alice, "restore_session", session_id=sid)
        assert restored["status"] == "success", restored
        broker.close()
    finally:
        ctx.destroy(linger=0)


def test_a_worker_with_forwarded_callers_never_serves_curve_itself() -> None:
    from stuisession.bridge.curve import AllowList, CurveConfig

    with pytest.raises(ValueError, match="forwarded_callers"):
        BridgeServer(
            ProtocolHandler(MemoryStore()),
            "tcp://127.0.0.1:*",
            curve=CurveConfig(b"x" * 40, b"y" * 40, AllowList.__new__(AllowList)),
            forwarded_callers=True,
        )

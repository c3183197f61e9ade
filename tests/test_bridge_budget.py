"""Queued-bytes accounting of the bridge (bridge/budget.py): per connection and in total.

Unit tests drive :class:`QueueBudget` with fake trackers and a fake clock; one
test runs a real BridgeServer against a client that never reads its replies.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
import zmq

from stuisession.bridge.budget import QueueBudget
from stuisession.bridge.server import BridgeServer
from stuisession.errors import Busy
from stuisession.policy import Policy
from stuisession.protocol.handler import ProtocolHandler
from stuisession.stores.memory import MemoryStore


class FakeTracker:
    def __init__(self) -> None:
        self.done = False


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def budget(per: int = 100, total: int = 250, idle: float = 10.0) -> tuple[QueueBudget, FakeClock]:
    clock = FakeClock()
    return QueueBudget(per, total, idle, clock=clock), clock


def send(b: QueueBudget, ident: str, size: int) -> FakeTracker:
    assert b.reply(ident, size) is None
    tracker = FakeTracker()
    b.sent(ident, size, tracker)
    return tracker


def test_unsent_replies_are_charged_until_written_out() -> None:
    b, clock = budget()
    first = send(b, "a", 60)
    second = send(b, "a", 30)
    assert b.held("a") == 90 and b.used == 90
    first.done = True
    clock.now += 1
    b.refresh()
    assert b.held("a") == 30
    second.done = True
    clock.now += 1
    b.refresh()
    assert b.held("a") == 0 and b.used == 0


def test_connection_over_its_queued_bound_is_dropped_until_idle() -> None:
    b, clock = budget(per=100, idle=10.0)
    send(b, "a", 80)
    refusal = b.reply("a", 30)  # 110 > 100: dropped, this reply discarded
    assert isinstance(refusal, Busy) and refusal.details["reason"] == "connection_dropped"
    assert b.held("a") == 80 and b.dropped("a")
    # its later requests are refused, and each refusal keeps it dropped
    for _ in range(3):
        clock.now += 9
        with pytest.raises(Busy) as exc:
            b.admit("a", 10)
        assert exc.value.details["reason"] == "connection_dropped"
    assert b.held("a") == 80  # refused requests are not charged
    # other connections are unaffected
    b.admit("b", 10)
    clock.now += 10
    assert not b.dropped("a")
    b.admit("a", 10)


def test_pending_requests_count_towards_the_connection_bound() -> None:
    b, _ = budget(per=100)
    b.admit("a", 60)
    with pytest.raises(Busy):
        b.admit("a", 60)
    assert b.dropped("a")
    b.request_done("a", 60)
    assert b.held("a") == 0


def test_total_queued_bound_refuses_new_work_with_busy() -> None:
    b, clock = budget(per=100, total=250)
    held = [send(b, ident, 90) for ident in ("a", "b")]
    b.admit("c", 50)  # 230
    with pytest.raises(Busy) as exc:
        b.admit("d", 30)  # 260 > 250
    assert exc.value.details["reason"] == "queued_bytes"
    assert not b.dropped("d")  # the total refuses work; it drops nobody
    refusal = b.reply("c", 40)
    assert isinstance(refusal, Busy) and refusal.details["reason"] == "reply_discarded"
    assert b.used == 230
    held[0].done = True
    clock.now += 1
    b.admit("d", 30)  # the written-out reply was released (refreshed on demand)
    assert b.used == 140 + 30


def test_a_failed_send_releases_its_reservation() -> None:
    b, _ = budget()
    assert b.reply("a", 50) is None
    b.sent("a", 50, None)
    assert b.used == 0


def test_statistics_are_small_and_count_refusals() -> None:
    b, _ = budget(per=10)
    for i in range(1000):
        with pytest.raises(Busy):
            b.admit(f"c{i}", 11)
    stats = b.statistics()
    assert stats["connections_dropped"] == 1000 and stats["requests_refused"] == 1000
    assert len(json.dumps(stats)) < 400


def _request(rid: str, command: str, **parameters: Any) -> bytes:
    return json.dumps({"id": rid, "command": command, "parameters": parameters}).encode()


def test_unread_replies_are_bounded_per_connection() -> None:
    """A client that asks for large replies and never reads them is dropped at its bound."""
    per = 8 * 1024 * 1024
    policy = Policy(rate_limit=None, max_queued_bytes_per_connection=per)
    srv = BridgeServer(
        ProtocolHandler(MemoryStore(), policy), "tcp://127.0.0.1:*", sweep_interval=3600
    )
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    ctx = zmq.Context()
    try:
        benign = ctx.socket(zmq.DEALER)
        benign.setsockopt(zmq.RCVTIMEO, 15_000)
        benign.setsockopt(zmq.LINGER, 0)
        benign.connect(srv.bound_endpoint)

        def call(rid: str, command: str, **params: Any) -> dict[str, Any]:
            benign.send(_request(rid, command, **params))
            reply: dict[str, Any] = json.loads(benign.recv())
            return reply

        sid = call("1", "create_session", client_id="c")["result"]["session_id"]
        big = {"workspaces": {"default": {"variables": {"v": "x" * (1024 * 1024)}}}}
        assert call("2", "update_session_state", session_id=sid, changes=big)["status"] == (
            "success"
        )
        attacker = ctx.socket(zmq.DEALER)
        attacker.setsockopt(zmq.ROUTING_ID, b"attacker")
        attacker.setsockopt(zmq.RCVHWM, 1)
        attacker.setsockopt(zmq.RCVBUF, 4096)
        attacker.setsockopt(zmq.LINGER, 0)
        attacker.connect(srv.bound_endpoint)
        for i in range(40):  # ~40 MB of replies, never read
            attacker.send(_request(f"a{i}", "restore_session", session_id=sid, client_id="c"))
        ident = b"attacker".hex()
        deadline = time.monotonic() + 60
        peak = 0
        while srv.budget.statistics()["connections_dropped"] == 0:
            peak = max(peak, srv.budget.held(ident))
            assert time.monotonic() < deadline, srv.budget.statistics()
            time.sleep(0.01)
        assert srv.budget.held(ident) <= per and peak <= per
        # the benign client is still served, and the dropped one refused
        assert call("3", "get_session_statistics")["status"] == "success"
        assert srv.budget.dropped(ident)
    finally:
        srv.stop()
        thread.join(30)
        srv.close()
        ctx.destroy(linger=0)

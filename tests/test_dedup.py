"""A resent request (same id, same content) is not applied twice."""

from __future__ import annotations

import json
import threading
import time

from stuisession import MemoryStore, ProtocolHandler
from stuisession.protocol.dedup import ReplyCache, request_key


def test_resent_update_is_applied_once() -> None:
    h = ProtocolHandler(MemoryStore())
    sid = h.handle({"id": "c", "command": "create_session", "parameters": {"client_id": "a"}})[
        "result"
    ]["session_id"]
    msg = json.dumps(
        {
            "id": "u-1",
            "command": "update_session_state",
            "parameters": {"session_id": sid, "append_history": {"w": [{"source": "1+1"}]}},
        }
    ).encode()
    first = json.loads(h.handle_wire(msg))
    second = json.loads(h.handle_wire(msg))  # the REQ client timed out and resent
    assert first == second
    assert first["result"]["revision"] == 2
    restored = h.handle(
        {"id": "r", "command": "restore_session", "parameters": {"session_id": sid}}
    )
    assert len(restored["result"]["workspace_context"]["workspaces"]["w"]["history"]) == 1
    # a new request id is a new request
    other = json.loads(h.handle_wire(msg.replace(b'"u-1"', b'"u-2"')))
    assert other["result"]["revision"] == 3


def test_resent_create_returns_the_same_session() -> None:
    h = ProtocolHandler(MemoryStore())
    msg = b'{"id":"c-7","command":"create_session","parameters":{"client_id":"a"}}'
    a, b = h.handle(msg), h.handle(msg)
    assert a["result"]["session_id"] == b["result"]["session_id"]
    token = a["result"]["client_token"]
    listed = h.handle(
        {
            "id": "l",
            "command": "list_client_sessions",
            "parameters": {"client_id": "a", "client_token": token},
        }
    )
    assert listed["result"]["session_count"] == 1


def test_dedup_can_be_turned_off() -> None:
    h = ProtocolHandler(MemoryStore(), dedup_ttl=None)
    msg = b'{"id":"c-7","command":"create_session","parameters":{"client_id":"a"}}'
    assert h.handle(msg)["result"]["session_id"] != h.handle(msg)["result"]["session_id"]


def test_concurrent_repeat_waits_for_the_first() -> None:
    cache = ReplyCache(ttl=60)
    calls = []
    gate = threading.Event()

    def slow() -> dict[str, int]:
        calls.append(1)
        gate.wait(5)
        return {"n": len(calls)}

    key = request_key("x", "update_session_state", {"a": 1})
    results: list[dict[str, int]] = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.run(key, slow))) for _ in range(3)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while not calls and time.monotonic() < deadline:
        time.sleep(0.001)
    gate.set()
    for t in threads:
        t.join(5)
    assert len(calls) == 1
    assert results == [{"n": 1}] * 3
    assert cache.hits == 2


def test_cache_is_bounded_by_entries_and_bytes() -> None:
    cache = ReplyCache(ttl=60, max_entries=3, max_bytes=10_000)
    for i in range(10):
        cache.run(request_key(i, "c", {}), lambda: {"ok": True}, cost=100)
    assert len(cache) == 3
    for i in range(5):
        # charged by the real size of the reply kept (about 6 kB), not the estimate
        cache.run(request_key(f"b{i}", "c", {}), lambda: {"ok": "x" * 6000}, cost=100)
    assert len(cache) == 1


def test_expired_entries_are_recomputed() -> None:
    cache = ReplyCache(ttl=0.0)
    n = []
    key = request_key(1, "c", {})
    cache.run(key, lambda: {"n": n.append(1) or len(n)})
    time.sleep(0.001)
    assert cache.run(key, lambda: {"n": n.append(1) or len(n)}) == {"n": 2}

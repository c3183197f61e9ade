"""Defaults that suit an embedding harness (issue 20): no throttling of an embedded
handler, ``SessionClient`` waiting out ``RateLimited``/``Busy``, failing fast with the
bridge down, closing its session on exit, and reply shapes matching ``stuisession.replies``."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from ports import free_port
from stuisession import MemoryStore, Policy, ProtocolHandler, replies
from stuisession.bridge.server import BridgeServer
from stuisession.client import RequestFailed, ServerUnavailable, SessionClient
from stuisession.security.identity import Caller

ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


class Running:
    """A BridgeServer serving in a thread."""

    def __init__(self, handler: ProtocolHandler) -> None:
        self.handler = handler
        self.srv = BridgeServer(handler, "tcp://127.0.0.1:*", sweep_interval=3600)
        self.endpoint = self.srv.bound_endpoint
        self.thread = threading.Thread(target=self.srv.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.srv.stop()
        self.thread.join(30)
        self.srv.close()


@pytest.fixture
def running() -> Iterator[Any]:
    made: list[Running] = []

    def factory(handler: ProtocolHandler | None = None) -> Running:
        r = Running(handler or ProtocolHandler(MemoryStore()))
        made.append(r)
        return r

    yield factory
    for r in made:
        r.stop()


def test_embedded_default_does_not_throttle_a_harness() -> None:
    handler = ProtocolHandler(MemoryStore())
    created = handler.handle(
        {"id": "c", "command": "create_session", "parameters": {"client_id": "harness"}}
    )
    sid = created["result"]["session_id"]
    for i in range(1000):  # well above the served burst of 200
        reply = handler.handle(
            {
                "id": f"u{i}",
                "command": "update_session_state",
                "parameters": {"session_id": sid, "state_data": {"n": i}},
            }
        )
        assert reply["status"] == "success", (i, reply)


def test_500_back_to_back_updates_through_session_client_with_defaults(running: Any) -> None:
    bridge = running()
    with SessionClient(bridge.endpoint, "harness-500", close_on_exit=True) as client:
        client.open()
        for i in range(500):
            assert client.update(state_data={"n": i}, mode="merge")["update_successful"]
        assert client.restore()["session_state"] == {"n": 499}


def test_client_waits_out_rate_limited_replies(
    running: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # 2 requests/s with a burst of 1: each update comes before its token unless a round
    # trip takes 0.5 s (20/s let a loaded machine refill the bucket between requests)
    bridge = running(ProtocolHandler(MemoryStore(), Policy(rate_limit=2.0, rate_burst=1)))
    caplog.set_level(logging.DEBUG, logger="stuisession.client")
    with SessionClient(bridge.endpoint, "throttled", close_on_exit=True) as client:
        client.open()
        for i in range(3):
            assert client.update(state_data={"n": i})["revision"] == i + 2
    # the client's own records only: the bridge's request log (INFO, "error_code=RateLimited")
    # is captured too when an earlier test in this process left its logger at INFO
    waits = [
        r
        for r in caplog.records
        if r.name == "stuisession.client" and "RateLimited" in r.getMessage()
    ]
    assert waits, "the client never said what it was waiting for"
    assert all(r.levelno == logging.DEBUG for r in waits)


def test_client_throttle_wait_is_bounded(running: Any) -> None:
    bridge = running(ProtocolHandler(MemoryStore(), Policy(rate_limit=0.01, rate_burst=1)))
    with SessionClient(bridge.endpoint, "bounded", max_throttle_wait=0.5) as client:
        client.open()  # the burst's one request
        started = time.monotonic()
        with pytest.raises(RequestFailed) as info:
            client.update(state_data={"n": 1})  # retry_after is ~100 s: not waited
        assert time.monotonic() - started < 30  # generous: the point is "not 100 s"
    assert info.value.error_code == "RateLimited"
    assert info.value.details["retry_after"] > 0.5


def test_client_fails_fast_when_the_bridge_is_down(caplog: pytest.LogCaptureFixture) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"  # nothing listens
    ctx = zmq.Context()
    try:
        client = SessionClient(endpoint, "lonely", context=ctx, connect_timeout=0.3)
        started = time.monotonic()
        with pytest.raises(ServerUnavailable) as info:
            client.open()
        elapsed = time.monotonic() - started
        client.close()
    finally:
        ctx.destroy(linger=0)
    # one try of 0.3 s, not timeout x (retries + 1) plus backoff (21.7 s by default)
    assert elapsed < 10
    assert "is the bridge running" in info.value.message
    assert any(r.levelno == logging.WARNING for r in caplog.records)


def test_close_on_exit_closes_the_session(running: Any) -> None:
    bridge = running()
    for _ in range(7):  # more than the 5 active sessions a client may hold
        with SessionClient(bridge.endpoint, "script", close_on_exit=True) as client:
            client.open()
            client.update(state_data={"ran": True})
    listed = bridge.handler.handle(
        {"id": "l", "command": "list_client_sessions", "parameters": {"client_id": "script"}},
        caller=Caller.local(),  # the test looks as the embedding application
    )
    assert listed["result"]["session_count"] == 0


# -- typed replies ------------------------------------------------------------------------
def _keys_fit(result: dict[str, Any], shape: Any) -> None:
    required = set(shape.__required_keys__)
    allowed = required | set(shape.__optional_keys__)
    assert required <= set(result), (shape.__name__, required - set(result))
    assert set(result) <= allowed, (shape.__name__, set(result) - allowed)


def test_typed_replies_match_what_the_handler_answers(running: Any) -> None:
    handler = ProtocolHandler(MemoryStore())

    def call(command: str, **params: Any) -> dict[str, Any]:
        reply = handler.handle({"id": command, "command": command, "parameters": params})
        _keys_fit(reply, replies.SuccessReply)
        result: dict[str, Any] = reply["result"]
        return result

    created = call("create_session", client_id="typed")
    _keys_fit(created, replies.CreateSessionResult)
    sid = created["session_id"]
    _keys_fit(
        call("update_session_state", session_id=sid, state_data={"a": 1}),
        replies.UpdateSessionStateResult,
    )
    _keys_fit(call("restore_session", session_id=sid), replies.RestoreSessionResult)
    _keys_fit(call("get_session_info", session_id=sid), replies.SessionInfoResult)
    listed = call("list_client_sessions", client_id="typed", client_token=created["client_token"])
    _keys_fit(listed, replies.ListClientSessionsResult)
    _keys_fit(listed["sessions"][0], replies.SessionListEntry)
    _keys_fit(
        call("save_context", session_id=sid, tool_id="ws1", context={}), replies.SaveContextResult
    )
    _keys_fit(call("load_context", session_id=sid, tool_id="ws1"), replies.LoadContextResult)
    _keys_fit(call("get_context_summary", session_id=sid), replies.ContextSummaryResult)
    _keys_fit(call("clear_context", session_id=sid, tool_id="ws1"), replies.ClearContextResult)
    _keys_fit(call("rotate_credentials", session_id=sid), replies.RotateCredentialsResult)
    _keys_fit(call("get_session_statistics"), replies.SessionStatisticsResult)
    _keys_fit(call("close_session", session_id=sid), replies.CloseSessionResult)
    error = handler.handle({"id": "e", "command": "restore_session", "parameters": {}})
    _keys_fit(error, replies.ErrorReply)

    # through the bridge: the statistics it adds, with ISO-8601 times
    bridge = running(handler)
    with SessionClient(bridge.endpoint, "typed") as client:
        public = client.call("get_session_statistics")
        assert "connections" not in public  # per-connection details: operators only
        # the embedding application is an operator: it sees the connection details
        reply = handler.handle(
            {"id": "s", "command": "get_session_statistics"}, caller=Caller.local()
        )
        stats = reply["result"]
    _keys_fit(public, replies.SessionStatisticsResult)
    _keys_fit(stats, replies.SessionStatisticsResult)
    assert stats["connections"], stats
    for conn in stats["connections"]:
        _keys_fit(conn, replies.ConnectionSummary)
        assert ISO.match(conn["connected_since"]) and ISO.match(conn["last_seen"]), conn

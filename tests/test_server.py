"""BridgeServer in-process: REQ and DEALER clients, bad frames, stop, sweep, logging."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq

from stuisession.bridge import replies
from stuisession.bridge import server as server_mod
from stuisession.bridge.replies import peek_fields, split_frames
from stuisession.bridge.server import BridgeServer
from stuisession.clock import ManualClock
from stuisession.policy import Policy
from stuisession.protocol.handler import ProtocolHandler
from stuisession.stores.memory import MemoryStore

#: failure timeout of every receive (ms): generous, it only bounds a broken test
RECV_MS = 10_000


class CountingHandler(ProtocolHandler):
    """A real handler that records sweeps and can be told to fail."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sweeps = 0
        self.swept = threading.Condition()
        self.sweep_error: Exception | None = None
        self.wire_error: Exception | None = None

    def cleanup_expired(self) -> int:
        with self.swept:
            self.sweeps += 1
            self.swept.notify_all()
        if self.sweep_error is not None:
            raise self.sweep_error
        return super().cleanup_expired()

    def wait_sweeps(self, n: int, timeout: float = 10.0) -> bool:
        with self.swept:
            return self.swept.wait_for(lambda: self.sweeps >= n, timeout)

    def handle_wire(self, message: Any, **kwargs: Any) -> bytes:
        if self.wire_error is not None:
            raise self.wire_error
        return super().handle_wire(message, **kwargs)


class Running:
    """A BridgeServer serving in a background thread."""

    def __init__(self, srv: BridgeServer) -> None:
        self.srv = srv
        self.thread = threading.Thread(target=srv.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return self.srv.bound_endpoint

    def shutdown(self) -> None:
        self.srv.stop()
        self.thread.join(10)
        assert not self.thread.is_alive(), "serve_forever did not return after stop()"
        self.srv.close()


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def start() -> Iterator[Callable[..., Running]]:
    """start(handler=None, **server_kwargs) -> a running server, stopped after the test."""
    running: list[Running] = []

    def factory(handler: ProtocolHandler | None = None, **kwargs: Any) -> Running:
        kwargs.setdefault("sweep_interval", 3600)
        srv = BridgeServer(handler or CountingHandler(MemoryStore()), "tcp://127.0.0.1:*", **kwargs)
        r = Running(srv)
        running.append(r)
        return r

    yield factory
    for r in running:
        r.shutdown()


def connect(ctx: zmq.Context, kind: int, endpoint: str) -> zmq.Socket:
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.RCVTIMEO, RECV_MS)
    sock.setsockopt(zmq.SNDTIMEO, RECV_MS)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    return sock


def request(rid: str, command: str, **parameters: Any) -> bytes:
    return json.dumps({"id": rid, "command": command, "parameters": parameters}).encode()


def call(sock: zmq.Socket, rid: str, command: str, **parameters: Any) -> dict[str, Any]:
    sock.send(request(rid, command, **parameters))
    reply = json.loads(sock.recv())
    assert reply["id"] == rid
    return reply


def ok(reply: dict[str, Any]) -> dict[str, Any]:
    assert reply["status"] == "success", reply
    return reply["result"]


# -- happy paths ------------------------------------------------------------------------
def test_req_client_create_update_restore(start: Callable[..., Running], ctx: zmq.Context):
    r = start()
    assert not r.endpoint.endswith(":*")
    req = connect(ctx, zmq.REQ, r.endpoint)
    sid = ok(call(req, "c1", "create_session", client_id="tui-1"))["session_id"]
    state = {"workspace": "x := 3 + 4.", "inspector": "open"}
    updated = ok(call(req, "u1", "update_session_state", session_id=sid, state_data=state))
    req.close()

    # a new socket, as after a network drop
    req2 = connect(ctx, zmq.REQ, r.endpoint)
    restored = ok(call(req2, "r1", "restore_session", session_id=sid))
    assert restored["session_state"] == state
    assert restored["revision"] == updated["revision"] == 2


def test_dealer_client_without_delimiter(start: Callable[..., Running], ctx: zmq.Context):
    r = start()
    dealer = connect(ctx, zmq.DEALER, r.endpoint)
    dealer.send(request("d1", "get_session_statistics"))
    frames = dealer.recv_multipart()
    assert len(frames) == 1
    reply = json.loads(frames[0])
    assert reply["id"] == "d1"
    assert reply["status"] == "success"


def test_dealer_with_delimiter_gets_req_style_reply(
    start: Callable[..., Running], ctx: zmq.Context
):
    r = start()
    dealer = connect(ctx, zmq.DEALER, r.endpoint)
    dealer.send_multipart([b"", request("d2", "get_session_statistics")])
    delimiter, body = dealer.recv_multipart()
    assert delimiter == b""
    assert json.loads(body)["id"] == "d2"


def test_routing_frames_are_echoed(start: Callable[..., Running], ctx: zmq.Context):
    # what a REQ client behind a ROUTER/DEALER proxy looks like to the server
    r = start()
    dealer = connect(ctx, zmq.DEALER, r.endpoint)
    dealer.send_multipart([b"hop-1", b"hop-2", b"", request("p1", "get_session_statistics")])
    frames = dealer.recv_multipart()
    assert frames[:3] == [b"hop-1", b"hop-2", b""]
    assert json.loads(frames[3])["id"] == "p1"


def test_pipelined_dealer_requests_all_answered(start: Callable[..., Running], ctx: zmq.Context):
    r = start()
    dealer = connect(ctx, zmq.DEALER, r.endpoint)
    ids = {f"p{i}" for i in range(200)}
    for rid in sorted(ids):
        dealer.send(request(rid, "get_session_statistics", client_id="nobody"))
    seen = set()
    for _ in ids:
        reply = json.loads(dealer.recv())
        assert reply["status"] == "success"
        seen.add(reply["id"])
    assert seen == ids


def test_concurrent_clients(start: Callable[..., Running], ctx: zmq.Context):
    r = start()
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def client(n: int) -> None:
        try:
            sock = connect(ctx, zmq.REQ, r.endpoint)
            try:
                barrier.wait(10)
                cid = f"client-{n}"
                sid = ok(call(sock, f"{cid}-c", "create_session", client_id=cid))["session_id"]
                for i in range(10):
                    state = {"n": n, "i": i}
                    ok(
                        call(
                            sock,
                            f"{cid}-u{i}",
                            "update_session_state",
                            session_id=sid,
                            state_data=state,
                        )
                    )
                restored = ok(call(sock, f"{cid}-r", "restore_session", session_id=sid))
                assert restored["session_state"] == {"n": n, "i": 9}
                assert restored["revision"] == 11
            finally:
                sock.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []


# -- bad input --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("frames", "expect_prefix"),
    [
        ([b"\xff\xfe garbage"], []),  # not UTF-8 (handler)
        ([b"not json"], []),  # not JSON (handler)
        ([b"[1, 2, 3]"], []),  # not an object (handler)
        ([b'{"command": "create_session"}'], []),  # no id (handler)
        ([b""], [b""]),  # an empty frame only: no body after the delimiter
        ([b"", b""], [b""]),  # REQ-style, empty body (handler)
        ([b"", b"{}", b"{}"], [b""]),  # two body frames
        ([b"", b"x", b"y", b"z"], [b""]),  # three body frames
        ([b"r"] * 40, []),  # absurdly many frames: envelope not echoed
        ([b""] + [b"r"] * 40, [b""]),
    ],
)
def test_malformed_messages_get_error_replies(
    start: Callable[..., Running], ctx: zmq.Context, frames: list[bytes], expect_prefix: list[bytes]
):
    r = start()
    dealer = connect(ctx, zmq.DEALER, r.endpoint)
    dealer.send_multipart(frames)
    got = dealer.recv_multipart()
    assert got[:-1] == expect_prefix
    reply = json.loads(got[-1])
    assert reply["status"] == "error"
    assert reply["error_code"] == "InvalidRequest"
    assert {"id", "error", "timestamp"} <= reply.keys()
    # and the server still serves
    req = connect(ctx, zmq.REQ, r.endpoint)
    ok(call(req, "after", "get_session_statistics"))


def test_garbage_from_many_clients_then_valid(start: Callable[..., Running], ctx: zmq.Context):
    r = start()
    junk = [b"\x00" * 10, b"{", b"null", b'{"id": {}, "command": 1}', b"\xc3\x28", b"1e999999"]
    for body in junk:
        req = connect(ctx, zmq.REQ, r.endpoint)
        req.send(body)
        assert json.loads(req.recv())["status"] == "error"
        req.close()
    req = connect(ctx, zmq.REQ, r.endpoint)
    ok(call(req, "fine", "get_session_statistics"))


def test_too_large_message_gets_message_too_large(start: Callable[..., Running], ctx: zmq.Context):
    r = start(CountingHandler(MemoryStore(), Policy(max_message_size=1024)))
    req = connect(ctx, zmq.REQ, r.endpoint)
    req.send(request("big", "create_session", client_id="c", client_info={"x": "y" * 4000}))
    reply = json.loads(req.recv())
    assert reply["status"] == "error"
    assert reply["error_code"] == "MessageTooLarge"
    ok(call(req, "small", "get_session_statistics"))


def test_handler_exception_becomes_error_reply(start: Callable[..., Running], ctx: zmq.Context):
    handler = CountingHandler(MemoryStore())
    r = start(handler)
    req = connect(ctx, zmq.REQ, r.endpoint)
    handler.wire_error = RuntimeError("boom")
    req.send(request("x1", "get_session_statistics"))
    reply = json.loads(req.recv())
    assert reply["status"] == "error"
    assert reply["error_code"] == "InternalError"
    assert "boom" not in reply["error"]
    handler.wire_error = None
    ok(call(req, "x2", "get_session_statistics"))


# -- stop / close -----------------------------------------------------------------------
def test_stop_wakes_the_poll_promptly(monkeypatch: pytest.MonkeyPatch):
    # without the wake-up, serve_forever would only notice after MAX_POLL_WAIT
    monkeypatch.setattr(server_mod, "MAX_POLL_WAIT", 60.0)
    srv = BridgeServer(CountingHandler(MemoryStore()), "tcp://127.0.0.1:*", sweep_interval=3600)
    r = Running(srv)
    deadline = time.monotonic() + 10
    while not srv.serving and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    srv.stop()
    r.thread.join(20)
    assert not r.thread.is_alive()
    assert time.monotonic() - started < 10
    srv.close()
    srv.close()  # idempotent
    srv.stop()  # harmless after close


def test_stop_before_serve_returns_immediately():
    with BridgeServer(CountingHandler(MemoryStore()), "tcp://127.0.0.1:*") as srv:
        srv.stop()
        srv.serve_forever()
        assert not srv.serving
    with pytest.raises(RuntimeError):
        srv.serve_forever()


def test_stop_from_another_thread_while_clients_are_busy(ctx: zmq.Context):
    srv = BridgeServer(CountingHandler(MemoryStore()), "tcp://127.0.0.1:*", sweep_interval=3600)
    r = Running(srv)
    dealer = connect(ctx, zmq.DEALER, r.endpoint)
    for i in range(50):
        dealer.send(request(f"b{i}", "get_session_statistics"))
    json.loads(dealer.recv())  # it is serving
    threading.Thread(target=srv.stop).start()
    r.thread.join(20)
    assert not r.thread.is_alive()
    srv.close()


def test_serve_forever_twice_concurrently_is_refused():
    srv = BridgeServer(CountingHandler(MemoryStore()), "tcp://127.0.0.1:*", sweep_interval=3600)
    r = Running(srv)
    deadline = time.monotonic() + 10
    while not srv.serving and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(RuntimeError):
        srv.serve_forever()
    r.shutdown()


def test_close_with_a_stuck_serve_thread_does_not_close_sockets(caplog: pytest.LogCaptureFixture):
    srv = BridgeServer(CountingHandler(MemoryStore()), "tcp://127.0.0.1:*")
    srv._idle.clear()  # pretend serve_forever is running in a thread that never returns
    with caplog.at_level(logging.WARNING, logger="stuisession.server"):
        srv.close(timeout=0.01)
    assert "did not return" in caplog.text
    srv._idle.set()
    srv.close()


def test_external_context_is_not_terminated(ctx: zmq.Context):
    with BridgeServer(CountingHandler(MemoryStore()), "tcp://127.0.0.1:*", context=ctx) as srv:
        assert srv.bound_endpoint
    assert not ctx.closed
    sock = ctx.socket(zmq.REQ)  # still usable
    sock.close()


def test_address_in_use_raises_and_releases_its_context(ctx: zmq.Context):
    with BridgeServer(CountingHandler(MemoryStore()), "tcp://127.0.0.1:*", context=ctx) as srv:
        before = len(ctx._sockets) if hasattr(ctx, "_sockets") else None
        with pytest.raises(zmq.ZMQError, match="in use"):
            BridgeServer(CountingHandler(MemoryStore()), srv.bound_endpoint, context=ctx)
        if before is not None:
            assert len(ctx._sockets) == before  # the failed server closed its socket
        # a private context is terminated too (term() would hang on an open socket)
        done = threading.Event()

        def attempt() -> None:
            with pytest.raises(zmq.ZMQError):
                BridgeServer(CountingHandler(MemoryStore()), srv.bound_endpoint)
            done.set()

        t = threading.Thread(target=attempt, daemon=True)
        t.start()
        assert done.wait(10)


def test_bad_sweep_interval():
    with pytest.raises(ValueError, match="sweep_interval"):
        BridgeServer(CountingHandler(MemoryStore()), "tcp://127.0.0.1:*", sweep_interval=0)


def test_port_zero_and_ipv6_endpoints():
    with BridgeServer(CountingHandler(MemoryStore()), "tcp://127.0.0.1:0") as srv:
        assert not srv.bound_endpoint.endswith(":0")
    try:
        srv6 = BridgeServer(CountingHandler(MemoryStore()), "tcp://[::1]:*")
    except zmq.ZMQError:
        pytest.skip("no IPv6 loopback here")
    with srv6:
        assert srv6.bound_endpoint.startswith("tcp://[::1]:")


def test_missing_pyzmq_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "zmq", None)
    with pytest.raises(ImportError, match=r"stuisession\[zmq\]"):
        BridgeServer(CountingHandler(MemoryStore()))


# -- sweep ------------------------------------------------------------------------------
def test_sweep_runs_every_interval(start: Callable[..., Running]):
    handler = CountingHandler(MemoryStore())
    start(handler, sweep_interval=0.02)
    assert handler.wait_sweeps(3)


def test_default_sweep_interval_is_the_policy_cleanup_interval():
    handler = CountingHandler(MemoryStore(), Policy(cleanup_interval=42))
    with BridgeServer(handler, "tcp://127.0.0.1:*") as srv:
        assert srv.sweep_interval == 42


def test_sweep_removes_expired_sessions(start: Callable[..., Running], ctx: zmq.Context):
    clock = ManualClock()
    handler = CountingHandler(MemoryStore(), Policy(session_timeout=60), clock=clock)
    r = start(handler, sweep_interval=0.02)
    req = connect(ctx, zmq.REQ, r.endpoint)
    sid = ok(call(req, "c", "create_session", client_id="c"))["session_id"]
    clock.advance(3600)
    n = handler.sweeps
    assert handler.wait_sweeps(n + 2)  # one full sweep after the clock moved
    reply = call(req, "i", "get_session_info", session_id=sid)
    assert reply["status"] == "error"
    assert reply["error_code"] == "SessionNotFound"


def test_sweep_errors_are_logged_not_raised(
    start: Callable[..., Running], ctx: zmq.Context, caplog: pytest.LogCaptureFixture
):
    handler = CountingHandler(MemoryStore())
    handler.sweep_error = OSError("disk on fire")
    with caplog.at_level(logging.ERROR, logger="stuisession.server"):
        r = start(handler, sweep_interval=0.02)
        assert handler.wait_sweeps(3)
        req = connect(ctx, zmq.REQ, r.endpoint)
        ok(call(req, "still", "get_session_statistics"))
    assert "expiry sweep failed" in caplog.text


# -- request log ------------------------------------------------------------------------
def test_one_log_line_per_request_without_contents(
    start: Callable[..., Running], ctx: zmq.Context, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="stuisession.server")
    r = start()
    req = connect(ctx, zmq.REQ, r.endpoint)
    sid = ok(call(req, "log-c", "create_session", client_id="secretive"))["session_id"]
    ok(
        call(
            req, "log-u", "update_session_state", session_id=sid, state_data={"password": "hunter2"}
        )
    )
    call(req, "log-x", "no_such_command\nINJECTED")
    ok(call(req, "log-end", "get_session_statistics"))  # the lines before are now written
    lines = [
        rec.getMessage()
        for rec in caplog.records
        if rec.name == "stuisession.server" and rec.getMessage().startswith("request ")
    ]
    text = "\n".join(lines)
    assert "command=create_session id=log-c status=success error_type=-" in text
    assert "command=update_session_state id=log-u status=success" in text
    assert (
        "status=error error_type=RuntimeError error_code=UpstreamError" in text
    )  # no backend configured
    assert "\nINJECTED" not in text
    for secret in (sid, "hunter2", "secretive", "password"):
        assert secret not in text
    assert all("duration_ms=" in line and "client=" in line for line in lines)
    assert len([line for line in lines if "id=log-" in line]) >= 3


def test_custom_logger(
    start: Callable[..., Running], ctx: zmq.Context, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="custom.bridge")
    r = start(logger=logging.getLogger("custom.bridge"))
    dealer = connect(ctx, zmq.DEALER, r.endpoint)
    dealer.send(request("cl-1", "get_session_statistics"))
    dealer.recv()
    dealer.send(request("cl-2", "get_session_statistics"))
    dealer.recv()
    assert any(
        "id=cl-1" in rec.getMessage() for rec in caplog.records if rec.name == "custom.bridge"
    )


# -- framing and peeking helpers --------------------------------------------------------
@pytest.mark.parametrize(
    ("frames", "envelope", "body", "bad"),
    [
        ([b"id", b"body"], [b"id"], b"body", False),
        ([b"id", b"", b"body"], [b"id", b""], b"body", False),
        ([b"id", b"a", b"b", b"", b"body"], [b"id", b"a", b"b", b""], b"body", False),
        ([b"id", b"a", b"body"], [b"id", b"a"], b"body", False),
        ([b"id"], [b"id"], None, True),
        ([b"id", b""], [b"id", b""], None, True),
        ([b"id", b"", b"x", b"y"], [b"id", b""], None, True),
    ],
)
def test_split_frames(frames: list[bytes], envelope: list[bytes], body: bytes | None, bad: bool):
    got_env, got_body, problem = split_frames(frames)
    assert got_env == envelope
    assert got_body == body
    assert (problem is not None) == bad


def test_peek_fields_reads_only_what_it_needs():
    msg = b'{"id": "a", "command": "restore_session", "parameters": {"x": [' + b"1," * 10**6
    assert peek_fields(msg, ("id", "command")) == {"id": "a", "command": "restore_session"}
    late = b'{"parameters": {"command": "nested"}, "id": 7, "command": "ping"}'
    assert peek_fields(late, ("command",)) == {"command": "ping"}
    reply = b'{"id":"r","status":"success","result":' + b"[" * 100_000
    meta = peek_fields(reply, ("id", "status", "error_type"), replies.reply_complete)
    assert meta == {"id": "r", "status": "success"}
    for junk in (
        b"",
        b"[]",
        b"{",
        b'{"a" 1}',
        b'{"a": 1 "b": 2}',
        b"\xff{",
        b'{"a":' + b"[" * 10**5,
        b"{1: 2}",
    ):
        assert peek_fields(junk, ("command",)) == {}


def test_printable():
    p = replies.printable
    assert p(None) == "-"
    assert p("create_session") == "create_session"
    assert p(17) == "17"
    assert p("a\nb") == "'a\\nb'"
    assert len(p("x" * 1000)) < 80
    assert p({"a": 1}) == repr('{"a": 1}')


def test_large_bodies_are_received_zero_copy_and_answered(
    ctx: zmq.Context, start: Callable[..., Running], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 17: a large body reaches the handler as a view of libzmq's buffer (the
    serving thread copies nothing), and is answered like any other request."""
    from stuisession.bridge import sockets

    seen: list[type] = []
    handler = ProtocolHandler(MemoryStore())
    real = handler.handle_wire

    def spy(message: Any, **kwargs: Any) -> bytes:
        seen.append(type(message))
        return real(message, **kwargs)

    monkeypatch.setattr(handler, "handle_wire", spy)
    srv = start(handler)
    sock = connect(ctx, zmq.DEALER, srv.endpoint)
    big = "x" * (sockets.ZERO_COPY_BYTES + 1000)
    sock.send(request("big", "create_session", client_id="alice", client_info={"note": big}))
    sock.send(request("small", "create_session", client_id="alice"))
    replies_ = {r["id"]: r for r in (json.loads(sock.recv()), json.loads(sock.recv()))}
    assert replies_["big"]["status"] == "success", replies_["big"]
    assert replies_["small"]["status"] == "success"
    assert sorted(t.__name__ for t in seen) == ["bytes", "memoryview"]
    sock.close()

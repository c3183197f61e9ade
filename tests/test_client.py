"""SessionClient against an in-process BridgeServer: open/restore, fallbacks,
timeouts and retries, a server restart mid-use, long disconnects, strict mode."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from stuisession.bridge.server import BridgeServer
from stuisession.client import RequestFailed, ServerUnavailable, SessionClient
from stuisession.clock import ManualClock
from stuisession.policy import Policy
from stuisession.protocol.handler import ProtocolHandler
from stuisession.stores.file.store import FileStore
from stuisession.stores.memory import MemoryStore


class Bridge:
    """A BridgeServer in a thread that can be stopped and started again on its endpoint."""

    def __init__(self, handler: ProtocolHandler, bind: str = "tcp://127.0.0.1:*") -> None:
        self.handler = handler
        self.srv: BridgeServer | None = None
        self.thread: threading.Thread | None = None
        self.endpoint = bind
        self.start()

    def start(self) -> None:
        assert self.srv is None
        self.srv = BridgeServer(self.handler, self.endpoint, sweep_interval=3600)
        self.endpoint = self.srv.bound_endpoint  # the real port after the first start
        self.thread = threading.Thread(target=self.srv.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        srv, thread, self.srv, self.thread = self.srv, self.thread, None, None
        if srv is None or thread is None:
            return
        srv.stop()
        thread.join(30)
        assert not thread.is_alive(), "serve_forever did not return after stop()"
        srv.close()


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def bridge() -> Iterator[Callable[..., Bridge]]:
    """bridge(handler=None) -> a running bridge; stopped after the test."""
    made: list[Bridge] = []

    def factory(handler: ProtocolHandler | None = None) -> Bridge:
        b = Bridge(handler or ProtocolHandler(MemoryStore()))
        made.append(b)
        return b

    yield factory
    for b in made:
        b.stop()


@pytest.fixture
def client(ctx: zmq.Context) -> Iterator[Callable[..., SessionClient]]:
    """client(endpoint, client_id, **kwargs) -> a SessionClient, closed after the test."""
    made: list[SessionClient] = []

    def factory(endpoint: str, client_id: str = "tui-test", **kwargs: Any) -> SessionClient:
        kwargs.setdefault("timeout", 5.0)
        c = SessionClient(endpoint, client_id, context=ctx, **kwargs)
        made.append(c)
        return c

    yield factory
    for c in made:
        c.close()


# -- open / restore ----------------------------------------------------------------------
def test_open_creates_then_restore_returns_the_state(
    bridge: Callable[..., Bridge], client: Callable[..., SessionClient]
):
    b = bridge()
    c = client(b.endpoint)
    created = c.open()
    assert c.session_id == created["session_id"]
    assert c.resume_token == created["resume_token"]
    assert c.revision == 1
    updated = c.update(state_data={"workspace": "x := 3 + 4."})
    assert updated["revision"] == c.revision == 2
    c.update(state_data={"inspector": "open"}, mode="merge")
    restored = c.restore()
    assert restored["session_id"] == created["session_id"]
    assert restored["session_state"] == {"workspace": "x := 3 + 4.", "inspector": "open"}
    assert restored["revision"] == c.revision == 3
    assert c.info()["is_active"] is True
    assert c.reconnects == 0


def test_open_with_a_remembered_session_restores_it(
    bridge: Callable[..., Bridge], client: Callable[..., SessionClient]
):
    b = bridge()
    first = client(b.endpoint, "tui-remember")
    sid = first.open()["session_id"]
    first.update(state_data={"kept": True})
    first.close()

    again = client(b.endpoint, "tui-remember", session_id=sid)
    opened = again.open()
    assert opened["session_id"] == sid
    assert opened["session_state"] == {"kept": True}
    assert opened["revision"] == again.revision == 2
    assert again.update(state_data={"kept": "still"})["revision"] == 3


def test_open_with_an_unknown_session_creates_a_new_one(
    bridge: Callable[..., Bridge], client: Callable[..., SessionClient]
):
    b = bridge()
    unknown = "session_" + "Z" * 43
    c = client(b.endpoint, "tui-unknown", session_id=unknown)
    created = c.open()
    assert created["session_id"] != unknown
    assert c.session_id == created["session_id"]
    assert c.revision == 1
    # someone else's session: denied like an unknown one, and a new session is made
    other = client(b.endpoint, "tui-other", session_id=created["session_id"])
    mine = other.open()
    assert mine["session_id"] != created["session_id"]
    assert mine["client_id"] == "tui-other"


def test_open_with_an_expired_or_closed_session_creates_a_new_one(
    bridge: Callable[..., Bridge], client: Callable[..., SessionClient]
):
    clock = ManualClock()
    b = bridge(ProtocolHandler(MemoryStore(), Policy(session_timeout=600), clock=clock))
    c = client(b.endpoint, "tui-expired")
    old = c.open()["session_id"]
    clock.advance(601)
    again = client(b.endpoint, "tui-expired", session_id=old)
    assert again.open()["session_id"] != old

    closing = client(b.endpoint, "tui-closed")
    closed_sid = closing.open()["session_id"]
    closing.close_session()
    assert closing.session_id is None
    reopened = client(b.endpoint, "tui-closed", session_id=closed_sid)
    assert reopened.open()["session_id"] != closed_sid


def test_open_with_an_id_in_another_format_falls_back_to_create(
    bridge: Callable[..., Bridge], client: Callable[..., SessionClient]
):
    b = bridge()
    c = client(b.endpoint, "tui-bad", session_id="session_4_1756713600_0000000042")
    assert c.open()["session_id"] != "session_4_1756713600_0000000042"


def test_other_errors_from_open_are_raised(
    bridge: Callable[..., Bridge], client: Callable[..., SessionClient]
):
    b = bridge()
    c = client(b.endpoint, " " * 3)  # a blank client id is refused, not retried
    with pytest.raises(RequestFailed) as info:
        c.open()
    assert info.value.error_code == "ValidationError"
    assert info.value.error_type == "SessionError"
    assert info.value.reply["status"] == "error"


def test_session_calls_need_open_first(client: Callable[..., SessionClient]):
    c = client("tcp://127.0.0.1:9", "tui-none")
    with pytest.raises(Exception, match="open"):
        c.update(state_data={"x": 1})
    with pytest.raises(Exception, match="open"):
        c.restore()


# -- timeouts, retries and restarts ------------------------------------------------------
def set_timeout(c: SessionClient, seconds: float) -> None:
    """Per-try timeout for the next requests (a socket takes its timeout when made).

    The restart tests use short tries only while the server is down: a busy machine
    may take longer than 0.2 s to answer a live server, and a timed-out try counts
    as a reconnect.
    """
    c.timeout = seconds
    c._drop()


def test_stopped_server_gives_server_unavailable_after_the_retries(
    bridge: Callable[..., Bridge], client: Callable[..., SessionClient]
):
    b = bridge()
    # short tries only while the server is down: a busy machine may take longer than
    # 0.1 s to answer a live one (and a timed-out try counts as a reconnect)
    c = client(b.endpoint, "tui-gone", timeout=5.0, retries=2, backoff=0.01)
    c.open()
    set_timeout(c, 0.1)
    b.stop()
    started = time.monotonic()
    with pytest.raises(ServerUnavailable) as info:
        c.update(state_data={"lost": True})
    elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 15.0  # three tries of 0.1 s (the default 5 s timeouts: 20 s)
    assert info.value.error_code == "ServerUnavailable"
    assert "3 tries" in info.value.message
    assert info.value.details["command"] == "update_session_state"


def test_server_restart_mid_call_is_ridden_through(
    tmp_path: Path, bridge: Callable[..., Bridge], client: Callable[..., SessionClient]
):
    store = FileStore(tmp_path / "store")
    b = bridge(ProtocolHandler(store))
    c = client(b.endpoint, "tui-restart", timeout=5.0, retries=30, backoff=0.05)
    sid = c.open()["session_id"]
    c.update(state_data={"before": 1}, mode="merge")
    set_timeout(c, 0.3)  # short tries while the server is down (only then)
    b.stop()
    # the same store behind a new server on the same endpoint, up again after a while
    restarter = threading.Timer(1.0, b.start)
    restarter.start()
    try:
        updated = c.update(state_data={"after": 2}, mode="merge")
    finally:
        restarter.join(30)
    assert updated["revision"] == 3
    assert c.reconnects == 1
    set_timeout(c, 5.0)  # the server is up again
    restored = c.restore()
    assert restored["session_id"] == sid
    assert restored["session_state"] == {"before": 1, "after": 2}
    assert restored["revision"] == 3
    assert c.reconnects == 1


def test_after_server_unavailable_the_next_call_restores_first(
    tmp_path: Path, bridge: Callable[..., Bridge], client: Callable[..., SessionClient]
):
    store = FileStore(tmp_path / "store")
    b = bridge(ProtocolHandler(store))
    c = client(b.endpoint, "tui-down", timeout=5.0, retries=1, backoff=0.01)
    sid = c.open()["session_id"]
    c.update(state_data={"n": 1})
    set_timeout(c, 0.2)  # short tries while the server is down (only then)
    b.stop()
    with pytest.raises(ServerUnavailable):
        c.update(state_data={"n": 2})
    b.start()  # same store, same endpoint
    c.timeout, c.retries = 5.0, 3
    assert c.update(state_data={"n": 3})["revision"] == 3
    assert c.reconnects == 1
    restored = c.restore()
    assert (restored["session_id"], restored["session_state"]) == (sid, {"n": 3})


# -- long disconnects (a manual clock) ---------------------------------------------------
def test_ten_minute_disconnect_then_restore(
    bridge: Callable[..., Bridge], client: Callable[..., SessionClient]
):
    clock = ManualClock()
    b = bridge(ProtocolHandler(MemoryStore(), clock=clock))  # sessions time out after 3600 s
    c = client(b.endpoint, "tui-away")
    sid = c.open()["session_id"]
    c.update(state_data={"workspace": "Smalltalk version"})
    c.close()  # the laptop lid closes
    clock.advance(600)
    back = client(b.endpoint, "tui-away", session_id=sid)
    restored = back.open()
    assert restored["session_id"] == sid
    assert restored["session_state"] == {"workspace": "Smalltalk version"}
    assert restored["revision"] == 2
    assert restored["time_until_expiry"] == 3600  # the restore counted as activity

    clock.advance(3601)
    with pytest.raises(RequestFailed) as info:
        back.restore()
    assert info.value.error_code == "SessionNotFound"
    assert info.value.details["reason"] == "expired"
    assert info.value.reply["details"] == {"reason": "expired"}
    # and open() starts over
    assert back.open()["session_id"] != sid


# -- strict mode ---------------------------------------------------------------------------
def test_strict_mode_client_follows_rotated_ids_and_tokens(
    bridge: Callable[..., Bridge], client: Callable[..., SessionClient]
):
    b = bridge(ProtocolHandler(MemoryStore(), Policy(auth_mode="strict")))
    c = client(b.endpoint, "tui-strict")
    created = c.open()
    ids, tokens = [created["session_id"]], [created["resume_token"]]
    c.update(state_data={"step": 0})
    for step in (1, 2):
        restored = c.restore()
        assert restored["session_id_rotated"] is True
        assert c.session_id == restored["session_id"] not in ids
        assert c.resume_token == restored["resume_token"] not in tokens
        ids.append(c.session_id)
        tokens.append(c.resume_token)
        assert restored["session_state"] == {"step": step - 1}
        c.update(state_data={"step": step})
    assert c.revision == 4

    # the old ids are gone; a client remembering the newest id and token gets in
    stale = client(b.endpoint, "tui-strict", session_id=ids[0], resume_token=tokens[0])
    with pytest.raises(RequestFailed) as info:
        stale.restore()
    assert info.value.error_code == "SessionNotFound"
    later = client(b.endpoint, "tui-strict", session_id=ids[-1], resume_token=tokens[-1])
    reopened = later.open()
    assert reopened["session_id"] not in ids
    assert reopened["session_state"] == {"step": 2}
    # without the resume token the session can not be had, and without the client
    # token a mere claim of the client id can not open another one either
    tokenless = client(b.endpoint, "tui-strict", session_id=later.session_id)
    with pytest.raises(RequestFailed) as info:
        tokenless.open()
    assert info.value.error_type == "SessionError"
    # the client token (handed out with every session) proves the client: open() creates
    proven = client(
        b.endpoint, "tui-strict", session_id=later.session_id, client_token=later.client_token
    )
    fresh = proven.open()
    assert fresh["session_id"] != later.session_id
    assert fresh["revision"] == 1


def test_strict_mode_reconnect_restores_with_the_rotated_id(
    tmp_path: Path, bridge: Callable[..., Bridge], client: Callable[..., SessionClient]
):
    store = FileStore(tmp_path / "store")
    b = bridge(ProtocolHandler(store, Policy(auth_mode="strict")))
    c = client(b.endpoint, "tui-strict-down", timeout=5.0, retries=1, backoff=0.01)
    first = c.open()["session_id"]
    c.update(state_data={"n": 1})
    set_timeout(c, 0.2)  # short tries while the server is down (only then)
    b.stop()
    with pytest.raises(ServerUnavailable):
        c.update(state_data={"n": 2})
    b.start()
    c.timeout = 5.0
    assert c.update(state_data={"n": 3})["revision"] == 3
    assert c.reconnects == 1
    assert c.session_id != first  # the reconnect restore rotated it
    assert c.restore()["session_state"] == {"n": 3}


def test_request_failed_accepts_any_details():
    # e.g. a forwarded error reply of the image, whose details are not ours
    exc = RequestFailed(
        {"status": "error", "error": "boom", "error_type": "Error", "details": {"message": "x"}}
    )
    assert (exc.message, exc.error_type, exc.details) == ("boom", "Error", {"message": "x"})
    odd = RequestFailed({"status": "error", "details": ["not", "an", "object"]})
    assert (odd.message, odd.error_type, odd.details) == ("error", "Error", {})


def test_open_while_the_server_restarts_restores_once(
    tmp_path: Path, bridge: Callable[..., Bridge], client: Callable[..., SessionClient]
):
    # strict mode makes every restore visible: it rotates the session id
    store = FileStore(tmp_path / "store")
    b = bridge(ProtocolHandler(store, Policy(auth_mode="strict")))
    first = client(b.endpoint, "tui-open-down")
    first.open()
    sid, token = first.session_id, first.resume_token
    first.close()
    b.stop()
    c = client(
        b.endpoint,
        "tui-open-down",
        session_id=sid,
        resume_token=token,
        timeout=0.3,
        retries=30,
        backoff=0.05,
        connect_timeout=None,  # ride out a server that is down at the very first call
    )
    restarter = threading.Timer(1.0, b.start)
    restarter.start()
    try:
        opened = c.open()
    finally:
        restarter.join(30)
    assert opened["session_id"] == c.session_id != sid
    assert c.reconnects == 1
    set_timeout(c, 5.0)  # the server is up again
    rotated = c.session_id
    c.update(state_data={"after": "restart"})
    assert c.session_id == rotated, "the update restored (and rotated) a second time"
    assert c.reconnects == 1


def test_an_interrupted_call_leaves_a_usable_client(
    bridge: Callable[..., Bridge], client: Callable[..., SessionClient]
):
    b = bridge()
    c = client(b.endpoint, "tui-interrupted")
    c.open()
    sock = c._connect()
    real_recv = sock.recv

    def interrupted(*args: Any, **kwargs: Any) -> bytes:
        raise KeyboardInterrupt

    sock.recv = interrupted
    with pytest.raises(KeyboardInterrupt):
        c.update(state_data={"n": 1})
    sock.recv = real_recv
    # a REQ socket that sent and never received can not send again: a fresh one is used
    assert c.update(state_data={"n": 2})["session_state"] == {"n": 2}

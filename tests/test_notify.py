"""Change notices (``serve --notify``): who hears what, and watchers that stay exact.

Bridges run in-process on loopback sockets. Waits are bounded by generous
timeouts that only limit a broken test; "receives nothing" is counted over a
fixed window while a control subscriber in the same window does receive.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import zmq

from stuisession.bridge.notify import Notifier
from stuisession.bridge.server import BridgeServer
from stuisession.client import SessionClient, SessionWatch
from stuisession.codec.snapshot import SnapshotCodec
from stuisession.keys import Keyring
from stuisession.policy import Policy
from stuisession.protocol.handler import ProtocolHandler
from stuisession.security.subscriptions import SubscriptionAuthority
from stuisession.state.schema import to_wire
from stuisession.stores.base import ChangeEvent, SessionStore
from stuisession.stores.file.store import FileStore
from stuisession.stores.memory import MemoryStore
from stuisession.stores.redis import RedisStore

#: bounds a wait that only a broken test exhausts (seconds)
WAIT = 15.0
#: the window in which refused subscribers are counted (seconds)
WINDOW = 1.0


class Bridge:
    """A BridgeServer with ``notify`` serving in a background thread."""

    def __init__(self, store: SessionStore, **kwargs: Any) -> None:
        self.store = store
        self.handler = ProtocolHandler(store, kwargs.pop("policy", None))
        self.srv = BridgeServer(
            self.handler,
            "tcp://127.0.0.1:*",
            notify="tcp://127.0.0.1:*",
            sweep_interval=3600,
            **kwargs,
        )
        assert self.srv.notifier is not None
        self.notify = self.srv.notifier.bound_endpoint
        self.endpoint = self.srv.bound_endpoint
        self.thread = threading.Thread(target=self.srv.serve_forever, daemon=True)
        self.thread.start()

    def client(self, client_id: str = "alice", **kwargs: Any) -> SessionClient:
        return SessionClient(self.endpoint, client_id, timeout=WAIT, **kwargs)

    def shutdown(self) -> None:
        self.srv.stop()
        self.thread.join(30)
        self.srv.close()


@pytest.fixture
def bridges() -> Iterator[Callable[..., Bridge]]:
    made: list[Bridge] = []

    def factory(store: SessionStore | None = None, **kwargs: Any) -> Bridge:
        b = Bridge(store if store is not None else MemoryStore(), **kwargs)
        made.append(b)
        return b

    yield factory
    for b in made:
        b.shutdown()


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def subscriber(ctx: zmq.Context, endpoint: str, prefix: bytes) -> zmq.Socket:
    """A SUB socket requesting *prefix*; it also asks for b"" (everything), which the
    bridge refuses but which opens the socket's own filter: what the bridge sends
    to this pipe is counted, whatever its topic."""
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(endpoint)
    sub.setsockopt(zmq.SUBSCRIBE, prefix)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    return sub


def frames_within(sub: zmq.Socket, seconds: float) -> list[list[bytes]]:
    """Every message *sub* receives in the next *seconds*."""
    got: list[list[bytes]] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if sub.poll(int(left * 1000) + 1):
            got.append(sub.recv_multipart())
    return got


def count_frames(socks: dict[str, zmq.Socket], seconds: float) -> dict[str, int]:
    """How many messages each socket receives in the same window of *seconds*."""
    poller = zmq.Poller()
    for sock in socks.values():
        poller.register(sock, zmq.POLLIN)
    counts = dict.fromkeys(socks, 0)
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        for name, sock in socks.items():
            while sock.poll(0):
                sock.recv_multipart()
                counts[name] += 1
        poller.poll(int(left * 1000) + 1)
    return counts


def next_notice(sub: zmq.Socket, timeout: float = WAIT) -> tuple[bytes, dict[str, Any]]:
    assert sub.poll(int(timeout * 1000)), "no notice arrived"
    topic, body = sub.recv_multipart()
    return topic, json.loads(body)


def wait_subscribed(sub: zmq.Socket) -> dict[str, Any]:
    """The ``subscribed`` notice that confirms a granted subscription."""
    while True:
        _topic, notice = next_notice(sub)
        if notice["event"] == "subscribed":
            return notice


def truth(store: SessionStore, session_id: str) -> dict[str, Any]:
    """The stored state's wire form, read from the store (not through the protocol)."""
    wire = to_wire(store.load(session_id).state)
    wire.pop("changes", None)  # the change log: not part of a watcher's copy
    return wire


def open_pair(bridge: Bridge) -> tuple[SessionClient, SessionClient]:
    """Client A with a new session, and client B attached to the same session."""
    a = bridge.client()
    a.open()
    b = bridge.client(session_id=a.session_id, resume_token=a.resume_token)
    b.open()
    assert b.session_id == a.session_id
    return a, b


def update_of(i: int) -> dict[str, Any]:
    """A mix of update kinds, so watchers replay sets, deletes and appends."""
    kind = i % 6
    if kind == 4:
        return {"changes": {"workspaces": {"w0": {"variables": {f"v{i % 3}": i}}}}}
    if kind == 5:  # removes a variable, sometimes the last one (then the field is omitted)
        return {"changes": {"workspaces": {"w0": {"variables": {f"v{(i + 1) % 3}": None}}}}}
    if kind == 0:
        return {"changes": {"preferences": {"theme": f"t{i}"}, "metadata": {"tags": [f"x{i}"]}}}
    if kind == 1:
        return {"workspace_context": {"workspaces": {f"w{i % 3}": {"contents": f"x := {i}."}}}}
    if kind == 2:
        return {"state_data": {"step": i, "note": "n" * (i % 5)}, "mode": "merge"}
    return {"object_registry": {f"obj_{i % 5}": None if i % 8 == 3 else f"{i}@{i}"}}


def catch_up(watch: SessionWatch, revision: int) -> None:
    deadline = time.monotonic() + WAIT
    while watch.revision != revision:
        assert time.monotonic() < deadline, f"watch stuck at {watch.revision}, want {revision}"
        watch.poll(0.2)


# -- two terminals on one session --------------------------------------------------------
def test_watch_copy_equals_full_restore_after_each_burst(bridges: Callable[..., Bridge]) -> None:
    bridge = bridges()
    a, b = open_pair(bridge)
    watch = b.watch(bridge.notify)
    wait_subscribed_watch(watch)
    subscribed = True
    for i in range(200):
        a.update(**update_of(i))
        if i % 10 == 9 and subscribed:  # a burst of ten; B catches up from the notices alone
            assert a.revision is not None
            catch_up(watch, a.revision)
            assert watch.state == truth(bridge.store, a.session_id or ""), f"after update {i}"
        if i == 99:
            # the subscription drops mid-run; the next notices are missed entirely
            watch.close()
            subscribed = False
        if i == 119:
            watch.resubscribe()  # missed 20 notices: one restore since its revision
            subscribed = True
            assert watch.state == truth(bridge.store, a.session_id or "")
    assert watch.syncs > watch.full_syncs, "deltas were never used"
    assert watch.state == truth(bridge.store, a.session_id or "")
    a.close()
    b.close()


def wait_subscribed_watch(watch: SessionWatch) -> None:
    # the bridge confirms a granted subscription with a "subscribed" notice
    deadline = time.monotonic() + WAIT
    while watch.notices == 0:
        assert time.monotonic() < deadline, "the subscription was never confirmed"
        watch.poll(0.2)


def test_watch_follows_a_lost_subscription_through_one_restore(
    bridges: Callable[..., Bridge],
) -> None:
    bridge = bridges()
    a, b = open_pair(bridge)
    watch = b.watch(bridge.notify)
    watch.close()
    for i in range(30):
        a.update(**update_of(i))
    watch.resubscribe()  # gap of 30 revisions: one delta restore closes it
    assert watch.revision == a.revision
    assert watch.state == truth(bridge.store, a.session_id or "")


# -- who hears what ------------------------------------------------------------------------
def test_unproven_subscribers_receive_nothing(
    bridges: Callable[..., Bridge], ctx: zmq.Context
) -> None:
    bridge = bridges()
    a = bridge.client()
    a.open()
    other = bridge.client("mallory")
    other.open()
    mine = a.call("watch_session", session_id=a.session_id, client_id="alice")
    theirs = other.call("watch_session", session_id=other.session_id, client_id="mallory")
    foreign_ring = SubscriptionAuthority(Keyring.generate())
    refused = {
        "empty prefix": subscriber(ctx, bridge.notify, b""),
        "the bare topic": subscriber(ctx, bridge.notify, mine["topic"].encode()),
        "the topic prefix": subscriber(ctx, bridge.notify, b"n1."),
        "the raw session id": subscriber(ctx, bridge.notify, (a.session_id or "").encode()),
        "another session's token, on this topic": subscriber(
            ctx, bridge.notify, theirs["subscription"].encode() + mine["topic"].encode()
        ),
        "a token of another keyring": subscriber(
            ctx, bridge.notify, foreign_ring.issue(a.session_id or "", 0).encode()
        ),
        "a truncated token": subscriber(ctx, bridge.notify, mine["subscription"][:-4].encode()),
        "identity form without CURVE": subscriber(
            ctx, bridge.notify, b"id." + (a.session_id or "").encode()
        ),
    }
    mallory = subscriber(ctx, bridge.notify, theirs["subscription"].encode())
    control = subscriber(ctx, bridge.notify, mine["subscription"].encode())
    wait_subscribed(control)
    for i in range(20):
        a.update(state_data={"i": i})
    # the proven subscriber hears all 20 (however long a loaded machine takes) ...
    updated = 0
    while updated < 20:
        updated += next_notice(control)[1]["event"] == "updated"
    # ... and in a window after that, the others hear nothing
    counts = count_frames(refused, WINDOW)
    # a valid token of another session subscribes to that session, never to this one
    assert [f[0] for f in frames_within(mallory, WINDOW / 4)] == [theirs["topic"].encode()]
    assert counts == dict.fromkeys(refused, 0)
    assert bridge.srv.notifier is not None
    # refusals are counted, except topic-shaped requests (a watcher's own filter)
    assert bridge.srv.notifier.refused >= len(refused) - 2
    stats = a.call("get_session_statistics")["notifications"]
    assert stats["refused"] >= len(refused) - 2 and stats["granted"] >= 2


def test_watch_token_is_revoked_by_rotate_credentials(
    bridges: Callable[..., Bridge], ctx: zmq.Context
) -> None:
    bridge = bridges()
    a = bridge.client()
    a.open()
    old = a.call("watch_session", session_id=a.session_id, client_id="alice")
    rotated = a.call("rotate_credentials", session_id=a.session_id, client_id="alice")
    a.resume_token = rotated["resume_token"]
    late = subscriber(ctx, bridge.notify, old["subscription"].encode())
    new = a.call("watch_session", session_id=a.session_id, client_id="alice")
    control = subscriber(ctx, bridge.notify, new["subscription"].encode())
    wait_subscribed(control)
    a.update(state_data={"x": 1})
    assert next_notice(control)[1]["event"] == "updated"
    assert frames_within(late, WINDOW) == []


def test_watch_session_needs_the_session_credentials(bridges: Callable[..., Bridge]) -> None:
    bridge = bridges()
    a = bridge.client()
    a.open()
    intruder = bridge.client("mallory")
    with pytest.raises(Exception) as info:
        intruder.call("watch_session", session_id=a.session_id, client_id="mallory")
    assert getattr(info.value, "error_type", None) == "SessionNotFound"


def test_notices_carry_no_state_and_no_raw_id(
    bridges: Callable[..., Bridge], ctx: zmq.Context
) -> None:
    bridge = bridges()
    a = bridge.client()
    a.open()
    token = a.call("watch_session", session_id=a.session_id, client_id="alice")
    sub = subscriber(ctx, bridge.notify, token["subscription"].encode())
    wait_subscribed(sub)
    a.update(state_data={"secret": "hunter2"})
    topic, notice = next_notice(sub)
    assert topic == token["topic"].encode()
    assert (a.session_id or "").encode() not in topic
    assert set(notice) <= {"event", "revision", "lineage"}
    assert notice == {"event": "updated", "revision": a.revision, "lineage": a.lineage}


def test_change_events_name_what_happened() -> None:
    store = MemoryStore()
    seen: list[ChangeEvent] = []
    store.add_change_listener(seen.append)
    handler = ProtocolHandler(store, Policy(session_timeout=60))
    created = handler.handle(
        {"id": "1", "command": "create_session", "parameters": {"client_id": "alice"}}
    )
    sid = created["result"]["session_id"]
    base = {"session_id": sid, "client_id": created["result"]["client_id"]}
    for rid, command, extra in [
        ("2", "update_session_state", {"state_data": {"a": 1}}),
        ("3", "save_context", {"tool_id": "ws", "context": {"k": 1}}),
        ("4", "rotate_credentials", {}),
        ("5", "restore_session", {}),  # a read: no notice
        ("6", "close_session", {}),
    ]:
        reply = handler.handle({"id": rid, "command": command, "parameters": {**base, **extra}})
        assert reply["status"] == "success", reply
    assert [(e.event, e.revision) for e in seen] == [
        ("created", 1),
        ("updated", 2),
        ("context_saved", 3),
        ("rotated", 3),
        ("closed", 4),
    ]
    assert {e.session_id for e in seen} == {sid}


def test_expiry_sweep_announces_expired_sessions() -> None:
    from stuisession.clock import ManualClock

    clock = ManualClock(1_000_000.0)
    store = MemoryStore()
    seen: list[ChangeEvent] = []
    store.add_change_listener(seen.append)
    handler = ProtocolHandler(store, Policy(session_timeout=60), clock=clock)
    created = handler.handle(
        {"id": "1", "command": "create_session", "parameters": {"client_id": "alice"}}
    )
    clock.advance(3600)
    handler.cleanup_expired()
    assert [e.event for e in seen] == ["created", "expired"]
    assert seen[-1].session_id == created["result"]["session_id"]


# -- across bridges ------------------------------------------------------------------------
def test_change_through_one_redis_bridge_reaches_subscribers_of_another(
    bridges: Callable[..., Bridge], ctx: zmq.Context, redis_url: str, redis_prefix: str
) -> None:
    ring = Keyring.generate()
    one = bridges(RedisStore(redis_url, prefix=redis_prefix, keyring=ring))
    two = bridges(RedisStore(redis_url, prefix=redis_prefix, keyring=ring))
    try:
        a = one.client()
        a.open()
        b = two.client(session_id=a.session_id)
        b.open()
        token = b.call("watch_session", session_id=a.session_id, client_id="alice")
        sub = subscriber(ctx, two.notify, token["subscription"].encode())
        wait_subscribed(sub)
        a.update(state_data={"from": "bridge one"})
        _topic, notice = next_notice(sub)
        assert notice == {"event": "updated", "revision": a.revision, "lineage": a.lineage}
        # and a watcher on bridge two follows writes through bridge one exactly
        watch = b.watch(two.notify)
        for i in range(20):
            a.update(**update_of(i))
        assert a.revision is not None
        catch_up(watch, a.revision)
        assert watch.state == truth(one.store, a.session_id or "")
    finally:
        one.store.close()
        two.store.close()


def test_file_store_bridge_notifies_the_changes_made_through_it(
    bridges: Callable[..., Bridge], ctx: zmq.Context, tmp_path: Path
) -> None:
    # the documented limit: no notices cross processes on a file store
    ring = Keyring.generate()
    one = bridges(FileStore(tmp_path, codec=SnapshotCodec(ring)))
    two = bridges(FileStore(tmp_path, codec=SnapshotCodec(ring)))
    a = one.client()
    a.open()
    b = two.client(session_id=a.session_id)
    b.open()
    token = b.call("watch_session", session_id=a.session_id, client_id="alice")
    sub_two = subscriber(ctx, two.notify, token["subscription"].encode())
    sub_one = subscriber(ctx, one.notify, token["subscription"].encode())
    wait_subscribed(sub_two)
    wait_subscribed(sub_one)
    a.update(state_data={"via": "one"})
    assert next_notice(sub_one)[1]["event"] == "updated"
    assert frames_within(sub_two, WINDOW) == []
    b.update(state_data={"via": "two"})
    assert next_notice(sub_two)[1] == {
        "event": "updated",
        "revision": b.revision,
        "lineage": b.lineage,
    }


# -- CURVE identity as the proof -----------------------------------------------------------
def test_curve_identity_bound_to_the_client_proves_a_subscription(ctx: zmq.Context) -> None:
    from zmq.auth.thread import ThreadAuthenticator

    server_public, server_secret = zmq.curve_keypair()
    alice_public, alice_secret = zmq.curve_keypair()
    eve_public, eve_secret = zmq.curve_keypair()
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve(domain="*", location=zmq.auth.CURVE_ALLOW_ANY)
    store = MemoryStore()
    handler = ProtocolHandler(store)
    sid = handler.service.create("alice").session.session_id
    names = {alice_public.decode(): "alice", eve_public.decode(): "eve"}

    def as_server(sock: zmq.Socket) -> None:
        sock.curve_secretkey = server_secret
        sock.curve_publickey = server_public
        sock.curve_server = True

    notifier = Notifier(
        handler.service,
        "tcp://127.0.0.1:*",
        ctx,
        identity_client=names.get,
        setup=as_server,
    )
    try:

        def curve_sub(public: bytes, secret: bytes) -> zmq.Socket:
            sub = ctx.socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            sub.curve_publickey, sub.curve_secretkey = public, secret
            sub.curve_serverkey = server_public
            sub.connect(notifier.bound_endpoint)
            sub.setsockopt(zmq.SUBSCRIBE, b"id." + sid.encode())
            sub.setsockopt(zmq.SUBSCRIBE, b"")  # the local filter: count all that arrives
            return sub

        alice = curve_sub(alice_public, alice_secret)
        eve = curve_sub(eve_public, eve_secret)
        assert wait_subscribed(alice)["revision"] == 1
        handler.service.close(sid)
        assert next_notice(alice)[1]["event"] == "closed"
        assert frames_within(eve, WINDOW) == []
    finally:
        notifier.close()
        auth.stop()


@pytest.mark.parametrize("cas", ["lua", "watch"])
def test_redis_publishes_a_notice_exactly_when_the_write_commits(
    redis_url: str, redis_prefix: str, cas: str
) -> None:
    from stuisession.errors import ConflictError
    from stuisession.service.core import SessionService
    from stuisession.state.updates import StateUpdate

    ring = Keyring.generate()
    writer = RedisStore(redis_url, prefix=redis_prefix, keyring=ring, cas=cas)  # type: ignore[arg-type]
    listener = RedisStore(redis_url, prefix=redis_prefix, keyring=ring)
    seen: list[ChangeEvent] = []
    got = threading.Event()

    def on_change(event: ChangeEvent) -> None:
        seen.append(event)
        got.set()

    try:
        listener.add_change_listener(on_change)
        # SUBSCRIBE is sent by add_change_listener; confirm the server has it
        deadline = time.monotonic() + WAIT
        while (
            dict(writer.client.pubsub_numsub(writer.changes_channel)).get(
                writer.changes_channel.encode(), 0
            )
            < 1
        ):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        service = SessionService(writer)
        sid = service.create("alice").session.session_id
        service.update(sid, StateUpdate(sets=((("session_state", "x"), 1),)))
        stale = service.load(sid)
        service.update(sid, StateUpdate(sets=((("session_state", "x"), 2),)))
        # a write that loses its compare-and-swap publishes nothing
        with pytest.raises(ConflictError), writer.announcing(ChangeEvent.of(stale, "updated")):
            # based on a record older than the one read: it can not commit
            writer.save(stale, expected=attrs.evolve(stale.info, version=stale.version - 1))
        service.close(sid)
        deadline = time.monotonic() + WAIT
        while len(seen) < 4 and time.monotonic() < deadline:
            got.wait(0.1)
        time.sleep(0.2)  # a stray fifth notice would arrive by now
        assert [(e.event, e.revision) for e in seen] == [
            ("created", 1),
            ("updated", 2),
            ("updated", 3),
            ("closed", 4),
        ]
    finally:
        writer.close()
        listener.close()


# -- the command line ----------------------------------------------------------------------
def test_serve_notify_publishes_to_a_token_holder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import os
    import signal

    from redis_server import free_port
    from stuisession.cli import app as cli

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    notify = f"tcp://127.0.0.1:{free_port()}"
    outcome: dict[str, Any] = {}

    def terminal() -> None:
        try:
            with SessionClient(endpoint, "alice", timeout=WAIT, close_on_exit=True) as a:
                a.open()
                watch = a.watch(notify)
                wait_subscribed_watch(watch)
                a.update(state_data={"via": "serve --notify"})
                assert a.revision is not None
                catch_up(watch, a.revision)
                outcome["state"] = watch.state["session_state"]
                watch.close()
        except BaseException as exc:
            outcome["error"] = exc
        finally:
            os.kill(os.getpid(), signal.SIGINT)

    helper = threading.Thread(target=terminal)
    helper.start()
    try:
        code = cli.main(
            ["serve", "--bind", endpoint, "--notify", notify, "--store", str(tmp_path / "s")]
        )
    finally:
        helper.join(WAIT * 2)
    assert code == 0
    assert outcome.get("error") is None, outcome
    assert outcome["state"] == {"via": "serve --notify"}
    err = capsys.readouterr().err
    assert f"change notices on {notify}" in err
    from stuisession.bridge.supervisor import default_workers

    # on several cores the default serve runs workers, and the parent publishes their notices
    assert ("workers:" in err) == (default_workers() > 1), err


def test_watch_restores_in_full_when_the_lineage_changes() -> None:
    """A delta against a revision of another history is discarded for a full restore."""

    class Scripted:
        _zmq = zmq
        _ctx = None

        def __init__(self) -> None:
            self.calls: list[int | None] = []
            self.replies = [
                {"revision": 3, "lineage": "L1", "delta": False, "session_state": {"a": 1}},
                # the session was rolled back and changed again: revision 4 of lineage L2
                {
                    "revision": 4,
                    "lineage": "L2",
                    "delta": True,
                    "changes": [{"path": ["session_state", "b"], "value": 2}],
                },
                {"revision": 4, "lineage": "L2", "delta": False, "session_state": {"c": 3}},
            ]

        def restore(self, since_revision: int | None = None) -> dict[str, Any]:
            self.calls.append(since_revision)
            return self.replies.pop(0)

    client = Scripted()
    watch = SessionWatch(client, "inproc://unused")  # type: ignore[arg-type]
    watch.sync(full=True)
    assert (watch.revision, watch.lineage, watch.state) == (3, "L1", {"session_state": {"a": 1}})
    watch.sync()
    assert client.calls == [None, 3, None]
    assert (watch.revision, watch.lineage, watch.state) == (4, "L2", {"session_state": {"c": 3}})


# -- the writer's cost (issue 22: what an update pays with notices on) -----------------
def test_topic_is_derived_once_per_session_and_key(monkeypatch: pytest.MonkeyPatch) -> None:
    import stuisession.security.subscriptions as subs_mod

    ring = Keyring.generate()
    authority = SubscriptionAuthority(ring)
    first = authority.topic("session_a")
    macs = []
    real_new = subs_mod.hmac.new
    monkeypatch.setattr(subs_mod.hmac, "new", lambda *a, **k: macs.append(1) or real_new(*a, **k))
    assert authority.topic("session_a") == first  # remembered: no HMAC per notice
    assert macs == []
    authority.keyring = ring.rotated()
    assert authority.topic("session_a") != first  # a new key gives a new topic at once
    assert macs == [1]


@pytest.mark.parametrize(
    ("event", "revision", "lineage"),
    [
        ("updated", 7, None),
        ("closed", 0, "L-1"),
        ("rotated", 12, 'odd "lineage"\n'),
        ("É", 1, None),
    ],
)
def test_notice_body_is_the_compact_json_object(
    event: str, revision: int, lineage: str | None
) -> None:
    from stuisession import _json
    from stuisession.bridge.notify import notice_body

    doc: dict[str, Any] = {"event": event, "revision": revision}
    if lineage is not None:
        doc["lineage"] = lineage
    assert notice_body(event, revision, lineage) == _json.dumps(doc)


def test_notices_of_a_request_leave_after_its_reply(
    ctx: zmq.Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = MemoryStore()
    handler = ProtocolHandler(store)
    notifier = Notifier(handler.service, "tcp://127.0.0.1:*", ctx)
    try:
        sid = handler.service.create("alice").session.session_id
        wakes: list[int] = []
        real_wake = notifier._wake
        monkeypatch.setattr(notifier, "_wake", lambda: wakes.append(1) or real_wake())
        with notifier.deferring():  # as a bridge worker handles a request
            handler.service.close(sid)
        assert wakes == []  # the socket thread is not woken while the reply is built
        notifier.kick()  # what serve_forever does after sending replies
        notifier.kick()  # nothing more held back: no second wake-up
        assert wakes == [1]
        handler.service.create("alice")  # not on a deferring thread: woken at once
        assert wakes == [1, 1]
        deadline = time.monotonic() + WAIT
        while notifier.published < 3:  # created, closed, created: all published
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        notifier.close()

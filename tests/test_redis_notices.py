"""Change notices on a shared Redis channel are sealed (codec/notice.py).

Any client of the Redis server may SUBSCRIBE to ``<prefix>:changes``. A notice names
its session, so it travels sealed with a key from the store's keyring: an eavesdropper
sees neither session ids nor client ids, and a forged or replayed notice is dropped.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

from stuisession.codec.notice import open_notice, seal_notice
from stuisession.keys import Keyring
from stuisession.service.core import SessionService
from stuisession.state.updates import StateUpdate
from stuisession.stores.base import ChangeEvent
from stuisession.stores.redis import RedisStore

WAIT = 15.0


def _wait_subscribed(store: RedisStore, n: int) -> None:
    deadline = time.monotonic() + WAIT
    channel = store.changes_channel
    while dict(store.client.pubsub_numsub(channel)).get(channel.encode(), 0) < n:
        assert time.monotonic() < deadline, "the subscription never reached the server"
        time.sleep(0.01)


def test_a_redis_subscriber_without_the_keyring_sees_no_session_or_client_id(
    redis_url: str, redis_prefix: str
) -> None:
    ring = Keyring.generate()
    store = RedisStore(redis_url, prefix=redis_prefix, keyring=ring)
    spy = store.client.pubsub(ignore_subscribe_messages=True)
    try:
        spy.subscribe(store.changes_channel)
        _wait_subscribed(store, 1)
        service = SessionService(store)
        sid = service.create("eavesdropped-client").session.session_id
        service.update(sid, StateUpdate(sets=((("session_state", "x"), 1),)))
        service.close(sid)
        raw: list[bytes] = []
        deadline = time.monotonic() + WAIT
        while len(raw) < 3 and time.monotonic() < deadline:
            msg: Any = spy.get_message(timeout=0.1)
            if msg is not None and isinstance(msg.get("data"), bytes):
                raw.append(msg["data"])
        assert len(raw) == 3, raw  # created, updated, closed: all published
        for data in raw:
            assert sid.encode() not in data and b"eavesdropped-client" not in data
            with pytest.raises(ValueError):
                json.loads(data)
            # the store's own keyring opens it: the notice is all there
            opened = open_notice(ring, data, store.changes_channel.encode())
            assert opened is not None
            event = ChangeEvent.from_json(opened)
            assert event is not None and event.session_id == sid
    finally:
        spy.close()
        store.close()


def test_a_forged_or_foreign_notice_never_reaches_listeners(
    redis_url: str, redis_prefix: str
) -> None:
    ring = Keyring.generate()
    store = RedisStore(redis_url, prefix=redis_prefix, keyring=ring)
    seen: list[ChangeEvent] = []
    got = threading.Event()

    def on_change(event: ChangeEvent) -> None:
        seen.append(event)
        got.set()

    try:
        store.add_change_listener(on_change)
        _wait_subscribed(store, 1)
        sid = SessionService(store).create("victim").session.session_id
        deadline = time.monotonic() + WAIT
        while not seen and time.monotonic() < deadline:
            got.wait(0.1)
        assert [e.event for e in seen] == ["created"]  # genuine notices arrive
        channel = store.changes_channel
        forged = ChangeEvent(session_id=sid, event="closed", revision=99, lineage=None)
        # in clear (what a client without the keyring can send) ...
        store.client.publish(channel, forged.to_json())
        # ... sealed by another keyring ...
        store.client.publish(
            channel, seal_notice(Keyring.generate(), forged.to_json(), channel.encode())
        )
        # ... and a genuine notice of another prefix's channel, replayed here
        store.client.publish(channel, seal_notice(ring, forged.to_json(), b"other:changes"))
        # a genuine one last: once it is delivered, the three before it were dropped
        store.client.publish(channel, seal_notice(ring, forged.to_json(), channel.encode()))
        deadline = time.monotonic() + WAIT
        while len(seen) < 2 and time.monotonic() < deadline:
            got.wait(0.1)
        assert [(e.event, e.revision) for e in seen] == [("created", 1), ("closed", 99)]
    finally:
        store.close()


def test_a_damaged_notice_does_not_open() -> None:
    ring = Keyring.generate()
    sealed = seal_notice(ring, b'{"s":"x","e":"updated","r":2}', b"p:changes")
    assert open_notice(ring, sealed, b"p:changes") == b'{"s":"x","e":"updated","r":2}'
    for i in range(len(sealed)):
        for bit in (0, 7):
            damaged = bytearray(sealed)
            damaged[i] ^= 1 << bit
            assert open_notice(ring, bytes(damaged), b"p:changes") is None, (i, bit)
    for cut in range(len(sealed)):
        assert open_notice(ring, sealed[:cut], b"p:changes") is None, cut

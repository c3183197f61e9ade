"""RedisStore specifics: key layout, TTL, prefixes, configuration and failures.

The behaviour every store shares is in ``test_store_conformance.py``. All
servers here are hermetic ``redis-server`` processes on 127.0.0.1.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import pytest
import redis
from redis.crc import key_slot

from redis_server import RedisServer, free_port
from stuisession.codec.snapshot import SnapshotCodec
from stuisession.errors import (
    ConfigurationError,
    ConflictError,
    IntegrityError,
    SessionNotFound,
    StorageError,
)
from stuisession.keys import ENV_KEYRING, Keyring
from stuisession.state import lifecycle
from stuisession.state.model import Session, SessionState
from stuisession.stores.redis import (
    DEFAULT_TTL,
    RedisStore,
    client_hash,
    redact_url,
)
from stuisession.stores.redis.urls import describe_client as _describe_client

NOW = 1_700_000_000.0
CAS = ["lua", "watch"]


@pytest.fixture(autouse=True)
def _no_env_keyring(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_KEYRING, raising=False)


@pytest.fixture
def keyring() -> Keyring:
    return Keyring.generate()


@pytest.fixture
def make_store(
    redis_url: str, redis_prefix: str, keyring: Keyring
) -> Iterator[Callable[..., RedisStore]]:
    stores: list[RedisStore] = []

    def make(**options: Any) -> RedisStore:
        options.setdefault("prefix", redis_prefix)
        options.setdefault("keyring", keyring)
        store = RedisStore(options.pop("url", redis_url), **options)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


@pytest.fixture(params=CAS)
def store(request: pytest.FixtureRequest, make_store: Callable[..., RedisStore]) -> RedisStore:
    return make_store(cas=request.param)


def new(client_id: str = "client-a", now: float = NOW) -> Session:
    return lifecycle.new_session(client_id, now=now, timeout=3600)


def changed(session: Session, **entries: Any) -> Session:
    state = SessionState(session_state={**session.state.session_state, **entries})
    return lifecycle.with_state(session, state, NOW + session.revision)


def key_names(store: RedisStore) -> list[str]:
    return sorted(k.decode() for k in store.client.scan_iter(match=f"{store.prefix}:*"))


# -- key layout ------------------------------------------------------------------------
def test_key_layout_3_names_sessions_and_clients_by_keyed_hashes(store: RedisStore) -> None:
    assert store.cas in CAS
    s = new("Ünïcødé {client} *")
    sid = store.new_session_id(s.client_id)
    s = attrs.evolve(s, session_id=sid)
    store.create(s)
    ch, tag = store.client_hash(s.client_id), store.client_tag(s.client_id)
    p = store.prefix
    assert store.layout == 3  # a new store, standalone or cluster
    assert ch != client_hash(s.client_id)  # keyed: a guessed client id does not find it
    assert sid[8:11] == tag
    member = store.index_member(sid)
    assert len(member) == 35 and member[:3] == tag and sid not in member
    session_key = f"{p}:s:{{{tag}}}:{member[3:]}"
    assert key_names(store) == sorted(
        [session_key, f"{p}:c:{{{tag}}}:{ch}", f"{p}:a:{{{tag}}}:{ch}", f"{p}:all", f"{p}:layout"]
    )
    assert store.client.get(f"{p}:layout") == b"3:" + store.codec.keyring.current_id.encode()
    assert store.session_key(sid) == session_key
    c = store.client
    assert c.hget(session_key, "client") == ch.encode()
    assert c.zrange(store.client_key(s.client_id), 0, -1) == [member.encode()]
    assert c.zrange(store.all_key, 0, -1) == [member.encode()]
    assert c.zscore(store.active_key(s.client_id), member) == s.expires_at
    # a client's keys and sessions share one slot
    slot = key_slot(session_key.encode())
    assert key_slot(store.client_key(s.client_id).encode()) == slot
    assert key_slot(store.active_key(s.client_id).encode()) == slot
    # listings give the ids back, read from the sealed records
    assert [i.session_id for i in store.list_by_client(s.client_id)] == [sid]
    assert list(store.ids()) == [sid]
    store.save(changed(s, x=1), expected=s)
    assert c.hget(session_key, "rev") == b"2"
    assert store.delete(sid)
    assert key_names(store) == [f"{p}:layout"]


def test_key_layout_1_uses_hash_tags(make_store: Callable[..., RedisStore]) -> None:
    store = make_store(layout=1)
    s = new("Ünïcødé {client} *")
    store.create(s)
    sid, ch = s.session_id, client_hash(s.client_id)
    p = store.prefix
    assert store.layout == 1  # asked for: no marker key, as earlier versions wrote
    assert key_names(store) == sorted(
        [f"{p}:s:{{{sid}}}", f"{p}:c:{{{ch}}}", f"{p}:a:{{{ch}}}", f"{p}:all"]
    )
    assert store.session_key(sid) == f"{p}:s:{{{sid}}}"
    assert store.client_key(s.client_id) == f"{p}:c:{{{ch}}}"
    assert store.active_key(s.client_id) == f"{p}:a:{{{ch}}}"
    # the active index: scored by when the session stops being active
    assert store.client.zscore(store.active_key(s.client_id), sid) == s.expires_at
    # the hash tag decides the slot: one session's keys always share one slot
    assert key_slot(store.session_key(sid).encode()) == key_slot(sid.encode())
    assert key_slot(store.client_key(s.client_id).encode()) == key_slot(ch.encode())
    c = store.client
    assert c.type(store.session_key(sid)) == b"hash"
    assert set(c.hkeys(store.session_key(sid))) == {
        b"blob",
        b"head",
        b"rev",
        b"ver",
        b"wid",
        b"client",
    }
    assert c.hget(store.session_key(sid), "rev") == b"1"
    # the compare-and-swap token: record version and lineage
    assert c.hget(store.session_key(sid), "ver") == f"1:{s.lineage}".encode()
    assert c.hget(store.session_key(sid), "client") == ch.encode()
    blob = c.hget(store.session_key(sid), "blob")
    assert blob.startswith(c.hget(store.session_key(sid), "head"))
    assert c.zrange(store.client_key(s.client_id), 0, -1) == [sid.encode()]
    assert c.zrange(store.all_key, 0, -1) == [sid.encode()]
    store.save(changed(s, x=1), expected=s)
    assert c.hget(store.session_key(sid), "rev") == b"2"
    # reopened without a layout, the store keeps layout 1 (it holds sessions)
    assert make_store().layout == 1


def test_stores_of_earlier_layouts_keep_their_layout_and_layout_3_names_the_way_out(
    make_store: Callable[..., RedisStore],
) -> None:
    old = make_store(layout=1)
    s = new()
    old.create(s)
    reopened = make_store()
    assert reopened.layout == 1 and reopened.load(s.session_id) == s
    with pytest.raises(ConfigurationError, match=r"uses key layout 1, not 3.*new prefix.*export"):
        make_store(layout=3)
    two = make_store(prefix=old.prefix + "-2", layout=2)
    two.create(s)
    assert make_store(prefix=two.prefix).layout == 2
    with pytest.raises(ConfigurationError, match="layout 2, not 3"):
        make_store(prefix=two.prefix, layout=3)
    # a layout-3 store names its key: a keyring without it is refused, naming the key id
    three = make_store(prefix=old.prefix + "-3")
    with pytest.raises(ConfigurationError, match=three.codec.keyring.current_id):
        make_store(prefix=three.prefix, keyring=Keyring.generate())
    # a marker this version does not know is refused
    old.client.set(f"{old.prefix}-4:layout", b"9")
    with pytest.raises(ConfigurationError, match="does not know"):
        make_store(prefix=old.prefix + "-4")


def test_verify_in_layout_3_reports_a_record_it_can_not_read_by_its_key(
    store: RedisStore,
) -> None:
    good, bad = new(), new()
    store.create(good)
    store.create(bad)
    key = store.session_key(bad.session_id)
    store.client.hset(key, mapping={"blob": b"\x00garbage", "head": b"\x00garbage"})
    # the id of a damaged record can not be read back: it is listed under its key
    items = store.verify_items()
    assert sorted(i.path or "" for i in items) == sorted([store.session_key(good.session_id), key])
    problems = list(store.verify())
    assert [p.path for p in problems] == [key]
    assert bad.session_id not in problems[0].session_id
    assert [i.session_id for i in store.iter_infos()] == [good.session_id]


def test_snapshots_are_ciphertext_in_redis(store: RedisStore) -> None:
    secret = "correct horse battery staple"
    s = lifecycle.new_session(
        "client-a", now=NOW, timeout=60, state=SessionState(session_state={"pw": secret})
    )
    store.create(s)
    raw = store.client.hget(store.session_key(s.session_id), "blob")
    assert secret.encode() not in raw
    assert store.load(s.session_id) == s


def test_client_index_moves_with_the_client(store: RedisStore) -> None:
    s = new("alice")
    store.create(s)
    moved = attrs.evolve(changed(s, x=1), client_id="bob")
    store.save(moved, expected=s)
    assert store.list_by_client("alice") == []
    assert [i.session_id for i in store.list_by_client("bob")] == [s.session_id]
    assert store.client.zcard(store.client_key("alice")) == 0


# -- TTL and expiry --------------------------------------------------------------------
def test_ttl_is_set_and_refreshed_on_write(make_store: Callable[..., RedisStore]) -> None:
    store = make_store(ttl=3600)
    s = new()
    store.create(s)
    key, ckey = store.session_key(s.session_id), store.client_key(s.client_id)
    assert 3590 <= store.client.ttl(key) <= 3600
    assert 3590 <= store.client.ttl(ckey) <= 3600
    store.client.expire(key, 10)
    store.client.expire(ckey, 10)
    store.save(changed(s, x=1), expected=s)
    assert store.client.ttl(key) > 3000
    assert store.client.ttl(ckey) > 3000
    store.client.expire(key, 10)
    snap = store.load_snapshot(s.session_id)
    store.save_info(snap, lifecycle.touch(snap.info, NOW + 5), expected=snap.info)
    assert store.client.ttl(key) > 3000
    assert store.client.ttl(store.all_key) == -1  # the global index never expires


def test_default_ttl_and_none(make_store: Callable[..., RedisStore]) -> None:
    assert make_store().ttl == DEFAULT_TTL == 30 * 86400
    store = make_store(ttl=None)
    s = new()
    store.create(s)
    assert store.client.ttl(store.session_key(s.session_id)) == -1
    store.client.expire(store.session_key(s.session_id), 100)
    store.save(changed(s), expected=s)
    assert store.client.ttl(store.session_key(s.session_id)) == -1


def test_redis_expires_abandoned_sessions(make_store: Callable[..., RedisStore]) -> None:
    store = make_store(ttl=1)
    gone, kept = new("alice"), new("alice", NOW + 1)
    store.create(gone)
    store.create(kept)
    # as if *kept* had been written again since (which refreshes both TTLs)
    store.client.persist(store.session_key(kept.session_id))
    store.client.persist(store.client_key("alice"))
    deadline = time.monotonic() + 10
    while store.client.exists(store.session_key(gone.session_id)):
        assert time.monotonic() < deadline, "Redis did not expire the key"
        time.sleep(0.1)
    with pytest.raises(SessionNotFound):
        store.load(gone.session_id)
    # index entries of the expired session are ignored...
    assert [i.session_id for i in store.list_by_client("alice")] == [kept.session_id]
    assert store.statistics(NOW).total_sessions == 1
    assert store.client.zcard(store.all_key) == 2  # ...and kept while young (grace)
    store.index_grace = 0
    assert [i.session_id for i in store.iter_infos()] == [kept.session_id]
    assert store.list_by_client("alice") == [kept.info]
    member = store.index_member(kept.session_id).encode()
    assert store.client.zrange(store.all_key, 0, -1) == [member]
    assert store.client.zrange(store.client_key("alice"), 0, -1) == [member]


def test_young_index_entries_survive_pruning(store: RedisStore) -> None:
    # an entry whose session does not exist *yet* (a create in progress) is kept
    store.index_grace = 60
    sid = store.index_member(new().session_id)
    store.client.zadd(store.all_key, {sid: time.time()})
    store.client.zadd(store.client_key("client-a"), {sid: time.time()})
    assert list(store.iter_infos()) == []
    assert store.list_by_client("client-a") == []
    assert store.client.zscore(store.all_key, sid) is not None
    assert store.client.zscore(store.client_key("client-a"), sid) is not None


def test_foreign_index_entries_are_skipped(store: RedisStore) -> None:
    store.client.zadd(store.all_key, {"not-a-session-id": 1, "session_}{": 1, "abc" + "g" * 32: 1})
    assert list(store.iter_infos()) == []
    assert sorted(store._ids()) == []


def test_missing_head_falls_back_to_blob(store: RedisStore) -> None:
    s = new()
    store.create(s)
    store.client.hdel(store.session_key(s.session_id), "head")
    assert store.load_info(s.session_id) == s.info


def test_statistics_report_stored_bytes(store: RedisStore) -> None:
    a, b = new(), new("b")
    store.create(a)
    store.create(b)
    stats = store.statistics(NOW)
    raw = sum(len(store.client.hget(store.session_key(x.session_id), "blob")) for x in (a, b))
    assert stats.stored_bytes == raw
    assert (stats.total_sessions, stats.clients) == (2, 2)


# -- isolation ---------------------------------------------------------------------------
def test_prefix_isolation(make_store: Callable[..., RedisStore], keyring: Keyring) -> None:
    a = make_store(prefix="tenant-a")
    b = make_store(prefix="tenant-b")
    s = new("shared-client")
    a.create(s)
    with pytest.raises(SessionNotFound):
        b.load(s.session_id)
    assert b.list_by_client("shared-client") == []
    assert b.statistics(NOW).total_sessions == 0
    assert list(b.iter_infos()) == []
    assert b.delete(s.session_id) is False
    b.create(s)  # the same id in the other prefix is another session
    assert a.load(s.session_id) == s
    assert a.delete(s.session_id) is True
    assert b.load(s.session_id) == s
    for key in key_names(a):
        assert key.startswith("tenant-a:")


def test_lua_and_watch_writers_exclude_each_other(make_store: Callable[..., RedisStore]) -> None:
    lua, watch = make_store(cas="lua"), make_store(cas="watch")
    s = new()
    lua.create(s)
    results: list[str] = []
    barrier = threading.Barrier(8, timeout=30)

    def write(st: RedisStore, n: int) -> None:
        barrier.wait()
        try:
            st.save(changed(s, n=n), expected=s)
            results.append("won")
        except ConflictError as exc:
            results.append(f"lost:{exc.current_revision}")

    threads = [threading.Thread(target=write, args=(lua if n % 2 else watch, n)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(results) == ["lost:2"] * 7 + ["won"]


# -- compare-and-swap details -------------------------------------------------------------
@pytest.mark.parametrize("cas", CAS)
def test_a_repeated_write_is_recognised(make_store: Callable[..., RedisStore], cas: str) -> None:
    # redis-py re-sends a command when a connection breaks; the same bytes
    # arriving twice must not turn a successful write into a conflict
    store = make_store(cas=cas)
    s = new()
    blob = store.codec.encode(s)
    store._put(s.info, blob, None, write_id=b"w1")
    store._put(s.info, blob, None, write_id=b"w1")
    s2 = changed(s, x=1)
    blob2 = store.codec.encode(s2)
    store._put(s2.info, blob2, s.info, write_id=b"w2")
    store._put(s2.info, blob2, s.info, write_id=b"w2")
    assert store.load(s.session_id) == s2
    with pytest.raises(ConflictError):  # other bytes at that version still conflict
        store._put(s2.info, store.codec.encode(s2), s.info, write_id=b"w3")
    # so does another writer's identical successor of the record it read (two
    # rotations of one record): only a resend of the same write is "applied"
    with pytest.raises(ConflictError):
        store._put(s2.info, blob2, s.info, write_id=b"w4")


def test_watch_retries_when_the_key_changes_under_it(
    make_store: Callable[..., RedisStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, other = make_store(cas="watch"), make_store(cas="lua")
    s = new()
    store.create(s)
    calls = []
    original = RedisStore._watch_read

    def interfering(self: RedisStore, pipe: Any, key: str) -> Any:
        calls.append(key)
        if len(calls) == 1:  # a write that leaves the record as it was sneaks in
            other.client.hset(key, "client", other.client.hget(key, "client"))
        return original(self, pipe, key)

    monkeypatch.setattr(RedisStore, "_watch_read", interfering)
    s2 = changed(s, x=1)
    store.save(s2, expected=s)
    assert len(calls) == 2
    assert store.load(s.session_id) == s2


@pytest.mark.parametrize("cas", CAS)
def test_no_stale_write_back_after_an_access_time_write(
    make_store: Callable[..., RedisStore], monkeypatch: pytest.MonkeyPatch, cas: str
) -> None:
    # an access-time write keeps the revision but is a new record version: a
    # write based on the record read before it must fail, not undo it
    store, other = make_store(cas=cas), make_store(cas="lua")
    s = new()
    store.create(s)
    snap = other.load_snapshot(s.session_id)
    touched = lifecycle.touch(snap.info, NOW + 1)
    other.save_info(snap, touched, expected=snap.info)
    with pytest.raises(ConflictError) as info:
        store.save(changed(s, x=1), expected=s)
    assert info.value.current_revision == 1
    assert store.load_info(s.session_id) == touched


def test_watch_gives_up_under_endless_interference(
    make_store: Callable[..., RedisStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(cas="watch")
    s = new()
    store.create(s)
    original = RedisStore._watch_read

    def interfering(self: RedisStore, pipe: Any, key: str) -> Any:
        result = original(self, pipe, key)
        self.client.hset(key, "client", self.client.hget(key, "client"))  # touches the key
        return result

    monkeypatch.setattr(RedisStore, "_watch_read", interfering)
    with pytest.raises(ConflictError) as info:
        store.save(changed(s), expected=s)
    assert info.value.current_revision == 1


@pytest.mark.parametrize("cas", CAS)
def test_lost_script_cache_is_reloaded(make_store: Callable[..., RedisStore], cas: str) -> None:
    store = make_store(cas=cas)
    a, b = new(), new()
    store.client.script_flush()
    store.create(a)
    store.client.script_flush()
    store.save(changed(a, x=1), expected=a)
    store.create(b)
    store.client.script_flush()
    assert store.delete(b.session_id)
    store.client.script_flush()
    store.index_grace = 0
    store.client.zadd(store.all_key, {store.index_member(new().session_id): 1})
    assert [i.session_id for i in store.iter_infos()] == [a.session_id]  # prunes via a script
    assert store.client.zcard(store.all_key) == 1


def test_wrong_type_at_a_session_key(store: RedisStore) -> None:
    sid = new().session_id
    store.client.set(store.session_key(sid), b"not a hash")
    with pytest.raises(StorageError) as info:
        store.load(sid)
    assert info.value.retryable is False
    assert "WRONGTYPE" in info.value.message
    s = lifecycle.new_session("client-a", now=NOW, timeout=60, session_id=sid)
    with pytest.raises(StorageError, match="WRONGTYPE"):
        store.create(s)
    with pytest.raises(StorageError, match="WRONGTYPE"):
        store.save(changed(s), expected=s)


def test_entries_in_the_wrong_client_index_are_skipped(store: RedisStore) -> None:
    s = new("alice")
    store.create(s)
    store.client.zadd(store.client_key("bob"), {store.index_member(s.session_id): 1})
    assert store.client.zcard(store.client_key("bob")) == 1
    assert store.list_by_client("bob") == []
    store.index_grace = 0
    assert store.list_by_client("bob") == []
    assert list(store._client_ids("bob")) == []
    assert store.client.zcard(store.client_key("bob")) == 0
    assert store.list_by_client("alice") == [s.info]


# -- configuration ---------------------------------------------------------------------------
def test_redact_url() -> None:
    assert redact_url("redis://u:s3cret@h:1/0") == "redis://u:***@h:1/0"
    assert redact_url("rediss://:s3cret@h/2") == "rediss://:***@h/2"
    assert (
        redact_url("redis://h:1/0?password=s3cret&db=1") == "redis://h:1/0?password=%2A%2A%2A&db=1"
    )
    assert redact_url("redis://user@h") == "redis://user@h"
    assert redact_url("unix:///run/redis.sock") == "unix:///run/redis.sock"
    assert (
        redact_url("unix:///run/r.sock?db=1&password=pw")
        == "unix:///run/r.sock?db=1&password=%2A%2A%2A"
    )
    assert "s3cret" not in redact_url("redis://u:s3cret@[::1")


def test_supplied_clients_are_described_without_password() -> None:
    tcp = redis.Redis.from_url("redis://u:pw-Secret@127.0.0.1:1/3")
    sock = redis.Redis(unix_socket_path="/run/redis.sock", password="pw-Secret")
    assert _describe_client(tcp) == ("redis://127.0.0.1:1/3", ["pw-Secret"])
    assert _describe_client(sock) == ("unix:///run/redis.sock?db=0", ["pw-Secret"])
    assert _describe_client(object()) == ("<object>", [])


@pytest.mark.parametrize("prefix", ["", "a{b}", "with space", "x" * 129, "ü", "a\nb"])
def test_invalid_prefix(redis_url: str, keyring: Keyring, prefix: str) -> None:
    with pytest.raises(ConfigurationError):
        RedisStore(redis_url, prefix=prefix, keyring=keyring)


@pytest.mark.parametrize(
    "options",
    [
        {"ttl": 0},
        {"ttl": -5},
        {"ttl": 1.5},
        {"ttl": True},
        {"cas": "optimistic"},
        {"socket_timeout": 0},
        {"connect_timeout": -1},
        {"codec": SnapshotCodec(Keyring.generate())},
    ],
)
def test_invalid_options(redis_url: str, keyring: Keyring, options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        RedisStore(redis_url, keyring=keyring, **options)


def test_a_keyring_is_required(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match="keyring"):
        RedisStore(redis_url)
    ring = Keyring.generate()
    monkeypatch.setenv(ENV_KEYRING, ring.to_json())
    with RedisStore(redis_url, prefix="envring") as store:
        assert store.codec.keyring.current_id == ring.current_id
    codec = SnapshotCodec(ring, encrypt=False)
    with RedisStore.from_url(redis_url, codec=codec) as store:
        assert store.codec is codec


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379", "127.0.0.1:6379", "redis://h:notaport/0"])
def test_bad_urls(url: str, keyring: Keyring) -> None:
    with pytest.raises(ConfigurationError):
        RedisStore(url, keyring=keyring, connect_timeout=0.5)


def test_redis_package_missing(
    redis_url: str, keyring: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(ConfigurationError, match=r"stuisession\[redis\]"):
        RedisStore(redis_url, keyring=keyring)


def test_lazy_export_does_not_import_redis() -> None:
    code = (
        "import sys, stuisession, stuisession.stores as s\n"
        "assert 'redis' not in sys.modules, 'redis imported eagerly'\n"
        "assert s.RedisStore.__name__ == 'RedisStore'\n"
        "assert 'redis' not in sys.modules, 'redis imported by the class'\n"
        "try:\n    s.NoSuchStore\nexcept AttributeError:\n    pass\n"
        "else:\n    raise SystemExit('no AttributeError')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_supplied_client(redis_url: str, redis_prefix: str, keyring: Keyring) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        store = RedisStore(client=client, prefix=redis_prefix, keyring=keyring)
        s = new()
        store.create(s)
        assert store.client is client
        assert repr(store).startswith(f"RedisStore('{redis_url}'")
        store.close()
        assert client.ping()  # not ours to close
        assert (
            RedisStore(client=client, prefix=redis_prefix, keyring=keyring).load(s.session_id) == s
        )
    finally:
        client.close()
    decoding = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        with pytest.raises(ConfigurationError, match="decode_responses"):
            RedisStore(client=decoding, keyring=keyring)
    finally:
        decoding.close()


def test_close_disconnects_and_is_idempotent(make_store: Callable[..., RedisStore]) -> None:
    store = make_store()
    store.create(new())
    pool = store.client.connection_pool
    store.close()
    store.close()
    assert all(c._sock is None for c in pool._available_connections)


# -- failures ------------------------------------------------------------------------------
def test_down_at_start_names_the_url_without_password(keyring: Keyring) -> None:
    port = free_port()  # nothing listens there
    for url in (
        f"redis://admin:s3cret-pw@127.0.0.1:{port}/0",
        f"redis://127.0.0.1:{port}/0?password=s3cret-pw",
    ):
        t0 = time.monotonic()
        with pytest.raises(StorageError) as info:
            RedisStore(url, keyring=keyring, connect_timeout=1)
        assert time.monotonic() - t0 < 10
        err = info.value
        assert err.retryable
        assert f"127.0.0.1:{port}" in err.message
        assert "s3cret-pw" not in err.message
        assert "s3cret-pw" not in repr(err.details)
        assert "s3cret-pw" not in str(err)
        assert err.details["url"] == redact_url(url)


def test_tls_url_to_a_plain_port_fails_cleanly(redis_server: RedisServer, keyring: Keyring) -> None:
    url = f"rediss://:s3cret@127.0.0.1:{redis_server.port}/0?ssl_cert_reqs=none"
    with pytest.raises(StorageError) as info:
        RedisStore(url, keyring=keyring, connect_timeout=0.5, socket_timeout=0.5)
    assert "s3cret" not in str(info.value)
    assert "rediss://:***@127.0.0.1" in info.value.message


def test_password_and_acl_user(
    redis_server_factory: Callable[..., RedisServer], keyring: Keyring
) -> None:
    server = redis_server_factory(password="pw-Secret-1")
    with RedisStore(server.url, keyring=keyring) as store:
        s = new()
        store.create(s)
        assert store.load(s.session_id) == s
        # the restricted ACL user that docs/backends.md recommends
        store.client.execute_command(
            "ACL", "SETUSER", "app", "on", ">app-Secret-2", "~stuisession:*",
            "+@read", "+@write", "+@scripting", "+@transaction", "+ping", "-@dangerous",
        )  # fmt: skip
        assert "pw-Secret-1" not in repr(store)
    acl_url = f"redis://app:app-Secret-2@127.0.0.1:{server.port}/0"
    for cas in ("lua", "watch"):
        with RedisStore(acl_url, keyring=keyring, cas=cas) as store:  # type: ignore[arg-type]
            assert store.load(s.session_id) == s
            other = new("acl")
            store.create(other)
            store.save(changed(other), expected=other)
            assert [i.session_id for i in store.list_by_client("acl")] == [other.session_id]
            assert store.statistics(NOW).total_sessions == 2
            assert store.delete(other.session_id)
    # outside its key pattern the user may do nothing: found at start (the store
    # reads its layout marker when it opens)
    with pytest.raises(StorageError, match="NoPermissionError") as info:
        RedisStore(acl_url, keyring=keyring, prefix="elsewhere")
    assert info.value.retryable is False
    for url in (
        server.url.replace("pw-Secret-1", "wrong-Secret-3"),
        f"redis://127.0.0.1:{server.port}/0",
    ):
        with pytest.raises(ConfigurationError) as info:
            RedisStore(url, keyring=keyring)
        assert "Secret" not in str(info.value)
        assert f"127.0.0.1:{server.port}" in info.value.message


@pytest.mark.parametrize("cas", CAS)
def test_server_restart_mid_run(
    redis_server_factory: Callable[..., RedisServer], keyring: Keyring, cas: str
) -> None:
    server = redis_server_factory(password="unused-pw")  # to check redaction too
    store = RedisStore(
        server.url, prefix="r", keyring=keyring, cas=cas, socket_timeout=2, connect_timeout=2
    )
    try:
        s = new()
        store.create(s)
        server.stop()
        fresh = new()
        ops: list[Callable[[], object]] = [
            lambda: store.load(s.session_id),
            lambda: store.load_info(s.session_id),
            lambda: store.save(changed(s), expected=s),
            lambda: store.create(fresh),
            lambda: store.delete(s.session_id),
            lambda: store.list_by_client("client-a"),
            lambda: store.statistics(NOW),
            lambda: list(store.iter_expired(NOW)),
        ]
        for op in ops:
            t0 = time.monotonic()
            with pytest.raises(StorageError) as info:
                op()
            assert time.monotonic() - t0 < 10
            assert info.value.retryable
            assert "unused-pw" not in str(info.value)
            assert f"127.0.0.1:{server.port}" in info.value.message
        server.start()  # same port, empty (no persistence), no scripts cached
        with pytest.raises(SessionNotFound):
            store.load(s.session_id)
        store.create(fresh)
        s2 = changed(fresh, x=1)
        store.save(s2, expected=fresh)
        assert store.load(fresh.session_id) == s2
        assert store.list_by_client("client-a") == [s2.info]
        assert store.delete(fresh.session_id)
    finally:
        store.close()


def test_timeout_mid_write_is_retryable_and_never_half_applied(
    make_store: Callable[..., RedisStore], redis_url: str
) -> None:
    # only the write under test has a short timeout: a busy machine may take longer
    # than 0.25 s to answer a live server
    store = make_store()
    impatient = make_store(socket_timeout=0.25)
    s = new()
    store.create(s)
    s2 = changed(s, x=1)
    admin = redis.Redis.from_url(redis_url)
    try:
        # paused until UNPAUSE below (the 60 s are a hang guard only)
        admin.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")
        try:
            with pytest.raises(StorageError) as info:
                impatient.save(s2, expected=s)
        finally:
            admin.execute_command("CLIENT", "UNPAUSE")
        assert info.value.retryable
        assert info.value.details["reason"] == "TimeoutError"
    finally:
        admin.close()
    # the write may or may not have landed; either way the whole of it or nothing
    assert store.load(s.session_id) in (s, s2)
    current = store.load(s.session_id)
    s3 = changed(current, y=2)
    store.save(s3, expected=current)
    assert store.load(s.session_id) == s3


def test_corrupt_blob_is_an_integrity_error(store: RedisStore) -> None:
    s = new()
    store.create(s)
    store.client.hset(store.session_key(s.session_id), "blob", b"\x00garbage")
    with pytest.raises(IntegrityError):
        store.load(s.session_id)
    assert store.load_info(s.session_id) == s.info  # the head copy is intact and verified

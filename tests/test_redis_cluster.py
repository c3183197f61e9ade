"""RedisStore on a real Redis Cluster, several bridges as one service, durability.

A hermetic 3-primary / 3-replica cluster (``tests/redis_cluster.py``) is
started once per test session; the failover tests start their own (they kill
a primary). Like the other Redis tests these fail -- never skip -- when
``redis-server`` or ``redis-cli`` is missing.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from redis.crc import key_slot

from redis_cluster import RedisClusterServers, count_lost, start_redis_cluster, update_load
from redis_server import RedisServer, RedisServerMissing
from stuisession.errors import ConfigurationError, SessionError, StorageError
from stuisession.keys import ENV_KEYRING, Keyring
from stuisession.policy import Policy
from stuisession.protocol import ProtocolHandler
from stuisession.security.identity import Caller
from stuisession.state import lifecycle
from stuisession.stores import SessionStore
from stuisession.stores.redis import RedisStore, client_hash, parse_cluster_url
from test_store_conformance import StoreConformance

NOW = 1_700_000_000.0


def _start_cluster() -> RedisClusterServers:
    try:
        return start_redis_cluster()
    except RedisServerMissing as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServers]:
    """A 3-primary cluster with one replica each, for the whole test session (never killed)."""
    cluster = _start_cluster()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def private_cluster() -> Iterator[RedisClusterServers]:
    """A cluster of one test's own (the test may kill its nodes)."""
    cluster = _start_cluster()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(autouse=True)
def _no_env_keyring(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_KEYRING, raising=False)


@pytest.fixture
def keyring() -> Keyring:
    return Keyring.generate()


def _cleanup(store: RedisStore) -> None:
    for key in list(store.client.scan_iter(match=f"{store.prefix}:*", count=1000)):
        store.client.delete(key)
    store.close()


@pytest.fixture
def cluster_store(
    redis_cluster: RedisClusterServers, keyring: Keyring
) -> Iterator[Callable[..., RedisStore]]:
    made: list[RedisStore] = []

    def factory(**options: Any) -> RedisStore:
        options.setdefault("prefix", made[0].prefix if made else f"t{secrets.token_hex(6)}")
        store = RedisStore(redis_cluster.url, keyring=keyring, **options)
        made.append(store)
        return store

    yield factory
    if made:
        _cleanup(made[0])
    for store in made[1:]:
        store.close()


# -- the conformance suite on the cluster ---------------------------------------------------
class TestRedisClusterStore(StoreConformance):
    @pytest.fixture
    def store(self, redis_cluster: RedisClusterServers) -> Iterator[SessionStore]:
        store = RedisStore(
            redis_cluster.url, prefix=f"t{secrets.token_hex(6)}", keyring=Keyring.generate()
        )
        try:
            yield store
        finally:
            _cleanup(store)

    def corrupt(self, store: Any, session_id: str, blob: bytes) -> None:
        key = store.session_key(session_id)
        assert store.client.exists(key)
        store.client.hset(key, mapping={"blob": blob, "head": blob})


# -- configuration --------------------------------------------------------------------------
def test_cluster_url_parsing() -> None:
    assert parse_cluster_url("redis+cluster://a:1,b:2") == (
        "redis://a:1/0",
        [("a", 1), ("b", 2)],
    )
    assert parse_cluster_url("rediss+cluster://u:pw@a,b:7001/0?ssl_cert_reqs=none") == (
        "rediss://u:pw@a:6379/0?ssl_cert_reqs=none",
        [("a", 6379), ("b", 7001)],
    )
    for bad in ("redis://a:1", "redis+cluster://a:x", "redis+cluster://a:1/3"):
        with pytest.raises(ConfigurationError):
            parse_cluster_url(bad)


def test_modes_that_cannot_work_on_a_cluster_are_refused(
    redis_cluster: RedisClusterServers, keyring: Keyring
) -> None:
    with pytest.raises(ConfigurationError, match="watch"):
        RedisStore(redis_cluster.url, keyring=keyring, cas="watch")
    with pytest.raises(ConfigurationError, match="layout 1"):
        RedisStore(redis_cluster.url, keyring=keyring, layout=1)
    with pytest.raises(ConfigurationError, match="durability"):
        RedisStore(redis_cluster.url, keyring=keyring, durability="fast")
    # the test cluster runs without AOF: durability='aof' is refused, naming the setting
    with pytest.raises(ConfigurationError, match="appendonly"):
        RedisStore(redis_cluster.url, keyring=keyring, durability="aof")


def test_cluster_store_reports_its_setup(cluster_store: Callable[..., RedisStore]) -> None:
    store = cluster_store(durability="replicas=1")
    assert store.is_cluster and store.layout == 3
    assert store.durability.startswith("replicas=1 (each write waits for WAIT 1")
    url_store = RedisStore(
        _url_of(store) + "?durability=none",
        prefix=store.prefix,
        keyring=store.codec.keyring,
    )
    assert url_store.durability.startswith("none")
    url_store.close()


def _url_of(store: RedisStore) -> str:
    nodes = store.client.get_nodes()
    return "redis+cluster://" + ",".join(f"{n.host}:{n.port}" for n in nodes)


def test_a_clients_keys_share_one_slot(cluster_store: Callable[..., RedisStore]) -> None:
    store = cluster_store()
    for client in ("alice", "Ünïcødé {x}", "c" * 256):
        sid = store.new_session_id(client)
        assert sid[8:11] == store.client_tag(client)
        assert store.client_hash(client) != client_hash(client)  # keyed in layout 3
        slot = key_slot(store.session_key(sid).encode())
        assert key_slot(store.client_key(client).encode()) == slot
        assert key_slot(store.active_key(client).encode()) == slot
    assert (
        store.client.get(f"{store.prefix}:layout")
        == b"3:" + store.codec.keyring.current_id.encode()
    )


def test_the_client_limit_is_one_atomic_step(cluster_store: Callable[..., RedisStore]) -> None:
    stores = [cluster_store(), cluster_store()]
    now = time.time()
    results: list[str] = []
    barrier = threading.Barrier(12)

    def create(i: int) -> None:
        store = stores[i % 2]
        s = lifecycle.new_session(
            "limited", now=now, timeout=3600, session_id=store.new_session_id("limited")
        )
        barrier.wait(timeout=30)
        try:
            store.create(s, max_per_client=5)
            results.append("ok")
        except SessionError as exc:
            assert exc.details["limit"] == 5
            results.append("limit")

    threads = [threading.Thread(target=create, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(results) == ["limit"] * 7 + ["ok"] * 5
    assert len(stores[0].list_by_client("limited")) == 5
    # a closed session no longer counts
    first = stores[0].list_by_client("limited")[0]
    closed = lifecycle.close(stores[0].load(first.session_id), now)
    stores[1].save(closed, expected=first)
    extra = lifecycle.new_session(
        "limited", now=now, timeout=3600, session_id=stores[1].new_session_id("limited")
    )
    stores[1].create(extra, max_per_client=5)


# -- two bridges on the cluster -------------------------------------------------------------
def _handlers(factory: Callable[..., RedisStore], n: int = 2, **policy: Any) -> list[Any]:
    policy.setdefault("rate_limit", None)
    return [ProtocolHandler(factory(), Policy(**policy)) for _ in range(n)]


def _ok(reply: dict[str, Any]) -> dict[str, Any]:
    assert reply["status"] == "success", reply
    result: dict[str, Any] = reply["result"]
    return result


def test_two_bridges_hold_the_per_client_limit(cluster_store: Callable[..., RedisStore]) -> None:
    bridges = _handlers(cluster_store, max_sessions_per_client=5)
    replies: list[dict[str, Any]] = []
    barrier = threading.Barrier(6)

    def create(i: int) -> None:
        barrier.wait(timeout=30)
        replies.append(
            bridges[i % 2].handle(
                {"id": i, "command": "create_session", "parameters": {"client_id": "six"}}
            )
        )

    threads = [threading.Thread(target=create, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    ok = [r for r in replies if r["status"] == "success"]
    refused = [r for r in replies if r["status"] != "success"]
    assert len(ok) == 5, replies
    assert [r["error_type"] for r in refused] == ["SessionError"]
    listed = _ok(
        bridges[1].handle(
            {"id": "l", "command": "list_client_sessions", "parameters": {"client_id": "six"}},
            caller=Caller.local(),  # the test looks as the embedding application
        )
    )
    assert len(listed["sessions"]) == 5


def test_two_bridges_lose_no_update_and_revocation_holds(
    cluster_store: Callable[..., RedisStore],
) -> None:
    bridges = _handlers(cluster_store)
    sids = [
        _ok(
            bridges[i % 2].handle(
                {"id": f"c{i}", "command": "create_session", "parameters": {"client_id": f"u{i}"}}
            )
        )["session_id"]
        for i in range(3)
    ]
    load = update_load(bridges, sids, seconds=1.5, threads_per_session=3, acks=60)
    assert load["errors"] == {}
    lost, total = count_lost(bridges[0].store, load["acked"])
    assert (lost, total > 50) == (0, True)
    for (sid, key), values in load["acked"].items():
        state = bridges[1].store.load(sid).state.session_state
        assert state[key] == values[-1]  # every writer's last update is there
    # closing on one bridge is seen by the other at once
    _ok(
        bridges[0].handle(
            {"id": "x", "command": "close_session", "parameters": {"session_id": sids[0]}}
        )
    )
    reply = bridges[1].handle(
        {"id": "r", "command": "restore_session", "parameters": {"session_id": sids[0]}}
    )
    assert reply["status"] == "error" and reply["error_type"] == "SessionNotFound"
    reply = bridges[1].handle(
        {
            "id": "u",
            "command": "update_session_state",
            "parameters": {"session_id": sids[0], "state_data": {"late": 1}, "mode": "merge"},
        }
    )
    assert reply["status"] == "error" and reply["error_type"] == "SessionNotFound"


# -- a primary dies mid-load ----------------------------------------------------------------
# make faults only (marker `heavy`); make test proves the cluster write path with the
# two-bridge tests above
@pytest.mark.slow
@pytest.mark.heavy
def test_failover_mid_load_replicas_1_loses_nothing(
    private_cluster: RedisClusterServers, keyring: Keyring
) -> None:
    prefix = f"t{secrets.token_hex(6)}"

    def make() -> RedisStore:
        return RedisStore(
            private_cluster.url,
            prefix=prefix,
            keyring=keyring,
            durability="replicas=1",
            socket_timeout=2,
            connect_timeout=1,
        )

    bridges = [ProtocolHandler(make(), Policy(rate_limit=None)) for _ in range(2)]
    sids = [
        _ok(
            bridges[0].handle(
                {"id": f"c{i}", "command": "create_session", "parameters": {"client_id": f"f{i}"}}
            )
        )["session_id"]
        for i in range(6)
    ]
    # the primary holding the first session's slot dies a third of the way in
    slot = key_slot(bridges[0].store.session_key(sids[0]).encode())  # type: ignore[attr-defined]
    victim = private_cluster.master_of_slot(slot)
    killed_at: list[float] = []

    def kill() -> None:
        private_cluster.kill(victim)
        killed_at.append(time.monotonic())

    load = update_load(bridges, sids, seconds=9.0, during=kill, acks_before=30, acks=60)
    # errors were clean StorageErrors (no internal errors, nothing unmapped)
    assert set(load["errors"]) <= {"StorageError", "StorageError:durability_unknown"}, load
    assert load["errors"], "the kill went unnoticed"
    # the bridges recovered without a restart: the dead primary's sessions are served
    # by its replica. That replica has no replica of its own now, so a write there is
    # applied but answered durability_unknown -- until the dead node comes back (as the
    # new primary's replica); then replicas=1 writes are acknowledged again.
    private_cluster.wait_failover(victim)

    def update(bridge: ProtocolHandler, i: int) -> dict[str, Any]:
        return bridge.handle(
            {
                "id": f"after-{i}-{time.monotonic()}",
                "command": "update_session_state",
                "parameters": {"session_id": sids[0], "state_data": {"after": i}, "mode": "merge"},
            }
        )

    def until_success(bridge: ProtocolHandler, i: int) -> dict[str, Any]:
        deadline = time.monotonic() + 20
        reply = update(bridge, i)
        while reply["status"] != "success" and time.monotonic() < deadline:
            time.sleep(0.1)
            reply = update(bridge, i)
        return reply

    for bridge in bridges:
        restored = bridge.handle(
            {"id": f"r{time.monotonic()}", "command": "restore_session",
             "parameters": {"session_id": sids[0]}}
        )  # fmt: skip
        assert restored["status"] == "success", restored
    reply = update(bridges[0], 0)
    assert reply["status"] == "error" and reply["details"]["reason"] == "durability_unknown"
    private_cluster.restart(victim)
    for i, bridge in enumerate(bridges):
        reply = until_success(bridge, i)
        assert reply["status"] == "success", reply
    # every acknowledged update survived the failover (read through a fresh store)
    fresh = make()
    try:
        lost, total = count_lost(fresh, load["acked"])
        assert total > 50
        assert lost == 0
        assert fresh.load(sids[0]).state.session_state["after"] == 1
    finally:
        fresh.close()
        for b in bridges:
            b.store.close()


# -- a single server restarted with AOF -------------------------------------------------------
@pytest.mark.slow
def test_aof_restart_keeps_every_acknowledged_update(keyring: Keyring) -> None:
    try:
        server = RedisServer(extra_args=["--appendonly", "yes", "--appendfsync", "always"])
    except RedisServerMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    server.start()
    try:
        store = RedisStore(server.url, keyring=keyring, durability="aof", socket_timeout=2)
        assert store.durability.startswith("aof (appendonly yes, appendfsync always")
        bridges = [ProtocolHandler(store, Policy(rate_limit=None))]
        sids = [
            _ok(
                bridges[0].handle(
                    {
                        "id": f"c{i}",
                        "command": "create_session",
                        "parameters": {"client_id": f"a{i}"},
                    }
                )
            )["session_id"]
            for i in range(4)
        ]
        # SIGKILL once 25 updates were acknowledged (none can be after it)
        load = update_load(bridges, sids, seconds=1.5, during=server.stop, acks_before=25)
        assert set(load["errors"]) <= {"StorageError"}
        server.start()  # same port, same directory: the AOF is replayed
        lost, total = count_lost(store, load["acked"])
        assert total > 20
        assert lost == 0
        store.close()
    finally:
        server.close()


def test_aof_durability_is_refused_without_fsync_always(
    redis_server_factory: Callable[..., RedisServer], keyring: Keyring
) -> None:
    server = redis_server_factory(extra_args=["--appendonly", "yes", "--appendfsync", "everysec"])
    with pytest.raises(ConfigurationError, match="appendfsync everysec"):
        RedisStore(server.url, keyring=keyring, durability="aof")
    # replicas=1 with no replica: a write is applied but not confirmed durable
    store = RedisStore(server.url, keyring=keyring, durability="replicas=1", durability_timeout=0.1)
    s = lifecycle.new_session("alone", now=NOW, timeout=3600)
    with pytest.raises(StorageError) as info:
        store.create(s)
    assert info.value.details["reason"] == "durability_unknown"
    assert store.load(s.session_id) == s  # it was applied on the primary
    # a resend of the same request is not applied twice (the dedup cache remembers)
    handler = ProtocolHandler(store, Policy())
    request = {"id": 7, "command": "create_session", "parameters": {"client_id": "twice"}}
    first, again = handler.handle(request), handler.handle(request)
    assert first == again and first["details"]["reason"] == "durability_unknown"
    assert len(store.list_by_client("twice")) == 1
    store.close()

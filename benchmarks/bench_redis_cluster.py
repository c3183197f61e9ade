"""Redis Cluster next to a single Redis server: latency, and what a crash loses per durability.

Run:  python benchmarks/bench_redis_cluster.py [--n 300] [--loss] [--json OUT]

Starts its own servers on free 127.0.0.1 ports (``tests/redis_server.py``,
``tests/redis_cluster.py``: 3 primaries + 3 replicas). Latency: p50/p99 (ms)
of store-level create (``create_within_limit``, the bridge's create), update
(``save``, a CAS write of a ~1 KB state) and restore (``load_snapshot``) for

- ``single``: one server, ``durability="none"``;
- ``cluster``: the cluster, ``durability="none"``;
- ``cluster_replicas1``: the cluster, ``durability="replicas=1"`` (WAIT 1 per write).

With ``--loss``, it also measures what a crash loses: writers merge
sequential updates through a ProtocolHandler while the server (or the
primary holding a slot) is SIGKILLed; afterwards every acknowledged update
is looked for. Settings: single server without persistence (restart),
``appendfsync everysec`` (process kill only: an OS crash could lose ~1 s
more), ``durability="aof"`` (``appendfsync always``), cluster failover with
``none`` and with ``replicas=1``. No figure is asserted.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from redis.crc import key_slot  # noqa: E402

from redis_cluster import count_lost, start_redis_cluster, update_load  # noqa: E402
from redis_server import RedisServer, start_redis_server  # noqa: E402
from stuisession.keys import Keyring  # noqa: E402
from stuisession.policy import Policy  # noqa: E402
from stuisession.protocol import ProtocolHandler  # noqa: E402
from stuisession.state import lifecycle  # noqa: E402
from stuisession.state.model import SessionState  # noqa: E402
from stuisession.stores.redis import RedisStore  # noqa: E402


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def latency(store: RedisStore, n: int) -> dict[str, dict[str, float]]:
    rnd = random.Random(7)
    times: dict[str, list[float]] = {"create": [], "update": [], "restore": []}
    for i in range(n):
        client = f"bench-{i % 50}"
        now = time.time()
        s = lifecycle.new_session(
            client,
            now=now,
            timeout=3600,
            session_id=store.new_session_id(client),
            state=SessionState(session_state={"data": rnd.randbytes(400).hex()}),
        )
        t = time.perf_counter()
        store.create_within_limit(s, limit=10**6)
        times["create"].append(time.perf_counter() - t)
        s2 = lifecycle.with_state(s, SessionState(session_state={"data": "x", "i": i}), now)
        t = time.perf_counter()
        store.save(s2, expected_revision=1)
        times["update"].append(time.perf_counter() - t)
        t = time.perf_counter()
        store.load_snapshot(s.session_id)
        times["restore"].append(time.perf_counter() - t)
    return {
        op: {"p50_ms": pct(xs, 0.5) * 1000, "p99_ms": pct(xs, 0.99) * 1000}
        for op, xs in times.items()
    }


def _sessions(handler: ProtocolHandler, n: int) -> list[str]:
    out = []
    for i in range(n):
        reply = handler.handle(
            {"id": f"c{i}", "command": "create_session", "parameters": {"client_id": f"l{i}"}}
        )
        out.append(reply["result"]["session_id"])
    return out


def loss_single(extra: list[str], durability: str, seconds: float) -> dict[str, Any]:
    server = RedisServer(extra_args=extra)
    server.start()
    try:
        store = RedisStore(server.url, keyring=Keyring.generate(), durability=durability)
        handler = ProtocolHandler(store, Policy(rate_limit=None))
        sids = _sessions(handler, 4)
        load = update_load([handler], sids, seconds=seconds, during=server.stop)
        server.start()
        lost, total = count_lost(store, load["acked"])
        store.close()
        return {"acknowledged": total, "lost": lost, "errors": load["errors"]}
    finally:
        server.close()


def loss_cluster(durability: str, seconds: float) -> dict[str, Any]:
    cluster = start_redis_cluster()
    try:
        keyring = Keyring.generate()

        def make() -> RedisStore:
            return RedisStore(cluster.url, keyring=keyring, durability=durability)

        handlers = [ProtocolHandler(make(), Policy(rate_limit=None)) for _ in range(2)]
        sids = _sessions(handlers[0], 6)
        store = handlers[0].store
        assert isinstance(store, RedisStore)
        victim = cluster.master_of_slot(key_slot(store.session_key(sids[0]).encode()))
        load = update_load(handlers, sids, seconds=seconds, during=lambda: cluster.kill(victim))
        cluster.wait_failover(victim)
        fresh = make()
        lost, total = count_lost(fresh, load["acked"])
        fresh.close()
        return {"acknowledged": total, "lost": lost, "errors": load["errors"]}
    finally:
        cluster.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--loss", action="store_true", help="also measure crash losses (~40 s)")
    ap.add_argument("--seconds", type=float, default=3.0, help="load per loss run")
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args()
    result: dict[str, Any] = {"n": args.n, "latency": {}}
    keyring = Keyring.generate()
    server = start_redis_server()
    cluster = start_redis_cluster()
    try:
        runs = {
            "single": (server.url, "none"),
            "cluster": (cluster.url, "none"),
            "cluster_replicas1": (cluster.url, "replicas=1"),
        }
        for name, (url, durability) in runs.items():
            store = RedisStore(url, keyring=keyring, prefix=f"b{name}", durability=durability)
            latency(store, max(20, args.n // 10))  # warm up
            result["latency"][name] = latency(store, args.n)
            store.close()
    finally:
        server.close()
        cluster.close()
    print(f"{'setup':20} {'op':8} {'p50 ms':>8} {'p99 ms':>8}")
    for name, ops in result["latency"].items():
        for op, v in ops.items():
            print(f"{name:20} {op:8} {v['p50_ms']:8.3f} {v['p99_ms']:8.3f}")
    if args.loss:
        s = args.seconds
        result["loss"] = {
            "single_no_persistence": loss_single([], "none", s),
            "single_aof_everysec_process_kill": loss_single(
                ["--appendonly", "yes", "--appendfsync", "everysec"], "none", s
            ),
            "single_durability_aof": loss_single(
                ["--appendonly", "yes", "--appendfsync", "always"], "aof", s
            ),
            "cluster_failover_none": loss_cluster("none", s),
            "cluster_failover_replicas1": loss_cluster("replicas=1", s),
        }
        print(f"\n{'crash':36} {'acknowledged':>12} {'lost':>6}  errors")
        for name, r in result["loss"].items():
            print(f"{name:36} {r['acknowledged']:12} {r['lost']:6}  {r['errors']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

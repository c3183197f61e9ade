"""Redis compare-and-swap benchmark: Lua script vs WATCH/MULTI/EXEC.

Run:  python benchmarks/bench_redis_cas.py [--n 2000] [--threads 4] [--json OUT]

Starts its own redis-server on a free 127.0.0.1 port (no persistence), then
measures, for ``RedisStore(cas="lua")`` and ``RedisStore(cas="watch")``:

- uncontended CAS writes (``_put`` of pre-encoded snapshots, so the codec is
  not measured) of a small (~1 KB) and a larger (~64 KB) snapshot, p50/p99;
- a contended read-modify-write loop: several threads incrementing one
  session with retries on conflict (commits per second, conflicts);

beside the floor of one PING round trip. Both variants run in alternating
rounds to even out drift. The WATCH variant needs 3 round trips per write
(WATCH, HMGET, MULTI..EXEC), the Lua one 1; "xPING" is p50 over a PING
round trip. No timing is asserted.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from redis_server import start_redis_server  # noqa: E402
from stuisession.errors import ConflictError  # noqa: E402
from stuisession.keys import Keyring  # noqa: E402
from stuisession.state import lifecycle  # noqa: E402
from stuisession.state.model import Session, SessionState  # noqa: E402
from stuisession.stores.redis import RedisStore  # noqa: E402

NOW = 1_700_000_000.0
CAS = ("lua", "watch")


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def state_of(size: int, seed: int) -> SessionState:
    rnd = random.Random(seed)
    return SessionState(session_state={"data": rnd.randbytes(size // 2).hex(), "n": 0})


def cas_writes(store: RedisStore, payload: int, n: int) -> list[float]:
    """Latency (ms) of *n* successive uncontended CAS writes of one session."""
    s = lifecycle.new_session("bench", now=NOW, timeout=3600, state=state_of(payload, 1))
    store.create(s)
    versions: list[tuple[Session, bytes]] = []
    cur = s
    for i in range(n):
        cur = lifecycle.with_state(cur, state_of(payload, i), NOW + i)
        versions.append((cur, store.codec.encode(cur)))
    out = []
    for nxt, blob in versions:
        t0 = time.perf_counter()
        store._put(nxt.info, blob, nxt.revision - 1)
        out.append((time.perf_counter() - t0) * 1000)
    store.delete(s.session_id)
    return out


def contended(store: RedisStore, threads: int, per_thread: int) -> tuple[float, int]:
    """(commits per second, conflicts) of *threads* incrementing one session."""
    s = lifecycle.new_session("bench", now=NOW, timeout=3600, state=state_of(512, 0))
    store.create(s)
    conflicts = [0]
    lock = threading.Lock()
    barrier = threading.Barrier(threads + 1)

    def work() -> None:
        barrier.wait()
        for _ in range(per_thread):
            while True:
                cur = store.load(s.session_id)
                data = dict(cur.state.session_state)
                data["n"] += 1
                try:
                    store.save(
                        lifecycle.with_state(cur, SessionState(session_state=data), NOW),
                        expected=cur,
                    )
                    break
                except ConflictError:
                    with lock:
                        conflicts[0] += 1

    ts = [threading.Thread(target=work) for _ in range(threads)]
    for t in ts:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in ts:
        t.join()
    elapsed = time.perf_counter() - t0
    final = store.load(s.session_id).state.session_state["n"]
    assert final == threads * per_thread, (final, threads * per_thread)
    store.delete(s.session_id)
    return threads * per_thread / elapsed, conflicts[0]


def timed(fn: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000, help="writes per variant (small snapshot)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--per-thread", type=int, default=150)
    ap.add_argument("--json", metavar="OUT", help="write the results as JSON")
    args = ap.parse_args()
    started = time.monotonic()
    server = start_redis_server()
    try:
        ring = Keyring.generate()
        stores = {
            "lua": RedisStore(server.url, prefix="bench-lua", keyring=ring, cas="lua"),
            "watch": RedisStore(server.url, prefix="bench-watch", keyring=ring, cas="watch"),
        }
        ping = timed(stores["lua"].client.ping, 1000)
        cases = {"small": (1024, args.n), "64KB": (64 * 1024, max(50, args.n // 8))}
        lat: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.rounds):
            for case, (payload, n) in cases.items():
                for cas in CAS:
                    lat.setdefault((case, cas), []).extend(
                        cas_writes(stores[cas], payload, max(10, n // args.rounds))
                    )
        rates: dict[str, list[float]] = {cas: [] for cas in CAS}
        conflicts: dict[str, int] = dict.fromkeys(CAS, 0)
        for _ in range(2):
            for cas in CAS:
                rate, c = contended(stores[cas], args.threads, args.per_thread // 2)
                rates[cas].append(rate)
                conflicts[cas] += c
        for store in stores.values():
            store.close()
    finally:
        server.close()

    print(f"redis-server 127.0.0.1:{server.port}; python {sys.version.split()[0]}")
    print(
        f"PING round trip: p50 {pct(ping, 0.5) * 1000:.0f} us, p99 {pct(ping, 0.99) * 1000:.0f} us"
    )
    print()
    print(f"{'uncontended CAS write':<24}{'p50 us':>9}{'p99 us':>9}{'RTTs':>6}")
    for case in cases:
        for cas in CAS:
            xs = lat[(case, cas)]
            p50, p99 = pct(xs, 0.5) * 1000, pct(xs, 0.99) * 1000
            rtts = pct(xs, 0.5) / pct(ping, 0.5)
            print(f"  {case:<7} {cas:<14}{p50:>9.0f}{p99:>9.0f}{rtts:>7.1f}")
        lua, watch = lat[(case, "lua")], lat[(case, "watch")]
        print(
            f"  {case:<7} ratio watch/lua: p50 {pct(watch, 0.5) / pct(lua, 0.5):.2f}x, "
            f"p99 {pct(watch, 0.99) / pct(lua, 0.99):.2f}x"
        )
    print()
    total = args.threads * (args.per_thread // 2) * 2
    print(f"contended: {args.threads} threads, {total} increments of one session")
    for cas in CAS:
        print(
            f"  {cas:<6} {statistics.median(rates[cas]):>8.0f} commits/s"
            f"   {conflicts[cas]:>5} conflicts"
        )
    ratio = statistics.median(rates["lua"]) / statistics.median(rates["watch"])
    print(f"  throughput ratio lua/watch: {ratio:.2f}x")
    faster = (
        "lua" if pct(lat[("small", "lua")], 0.5) <= pct(lat[("small", "watch")], 0.5) else "watch"
    )
    print()
    print(f"faster (small p50): {faster}; took {time.monotonic() - started:.1f} s")
    if args.json:
        result = {
            "ping_p50_us": pct(ping, 0.5) * 1000,
            "ping_p99_us": pct(ping, 0.99) * 1000,
            "writes": {
                case: {
                    cas: {
                        "n": len(lat[(case, cas)]),
                        "p50_us": pct(lat[(case, cas)], 0.5) * 1000,
                        "p99_us": pct(lat[(case, cas)], 0.99) * 1000,
                    }
                    for cas in CAS
                }
                for case in cases
            },
            "contended": {
                "threads": args.threads,
                "increments": total,
                **{
                    cas: {
                        "commits_per_s": statistics.median(rates[cas]),
                        "conflicts": conflicts[cas],
                    }
                    for cas in CAS
                },
            },
            "faster_small": faster,
            "elapsed_s": time.monotonic() - started,
        }
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""The expiry sweep at scale: 10,000 stored sessions (100,000 with --sessions), 90% expired.

Run:  python benchmarks/bench_sweep.py [--sessions 10000] [--batch 500] [--json OUT]

``make bench`` runs it at 10,000 sessions to stay within its time budget; pass
``--sessions 100000`` for the full-scale figures (populating alone then takes
a few minutes).

Prints the time of the whole sweep, the longest single step (how long a live
request could wait behind one step), the latency of restores served between
steps, and the peak traced memory of the sweep (flat: independent of the
store's size). Populating uses fsync=False to keep the run short; the sweep's
deletes are what is measured.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from stuisession import FileStore, ManualClock, Policy, ProtocolHandler
from stuisession.state import lifecycle


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--json", metavar="OUT", help="write the results as JSON")
    args = ap.parse_args()
    started = time.perf_counter()
    clock = ManualClock()
    work = Path(__file__).resolve().parent / ".work"
    work.mkdir(exist_ok=True)
    if not (work / ".gitignore").exists():
        (work / ".gitignore").write_text("*\n")
    with tempfile.TemporaryDirectory(prefix="sweep-", dir=work) as tmp:
        store = FileStore(Path(tmp) / "s", fsync=False)
        t0 = time.perf_counter()
        live = []
        for i in range(args.sessions):
            expired = i % 10 != 0
            s = lifecycle.new_session(
                f"c{i % 1000}", now=clock.now() - (7200 if expired else 0), timeout=3600
            )
            store.create(s)
            if not expired:
                live.append(s.session_id)
        populate_s = time.perf_counter() - t0
        print(f"populated {args.sessions} sessions in {populate_s:.1f} s", flush=True)
        handler = ProtocolHandler(
            store, Policy(rate_limit=None, sweep_batch=args.batch), clock=clock
        )
        steps, removed, longest, live_ms = 0, 0, 0.0, []
        tracemalloc.start()
        t0 = time.perf_counter()
        while True:
            s0 = time.perf_counter()
            step = handler.service.sweep_step()
            longest = max(longest, time.perf_counter() - s0)
            steps += 1
            removed += step.removed
            r0 = time.perf_counter()
            handler.handle(
                {
                    "id": "r",
                    "command": "get_session_info",
                    "parameters": {"session_id": live[steps % len(live)]},
                }
            )
            live_ms.append((time.perf_counter() - r0) * 1000)
            if step.done:
                break
        total = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        live_ms.sort()
        print(f"sweep: removed {removed} in {total:.1f} s over {steps} steps of <= {args.batch}")
        print(
            f"longest step {longest * 1000:.1f} ms (the most a request waits behind the sweep "
            f"on a single-threaded host; the bridge runs steps on its worker pool)"
        )
        print(
            f"live get_session_info between steps: p50 {live_ms[len(live_ms) // 2]:.2f} ms, "
            f"max {live_ms[-1]:.2f} ms"
        )
        print(f"peak traced memory during the sweep: {peak / 1e6:.1f} MB")
    if args.json:
        result = {
            "sessions": args.sessions,
            "expired": removed,
            "batch": args.batch,
            "populate_s": populate_s,
            "sweep_s": total,
            "steps": steps,
            "longest_step_ms": longest * 1000,
            "live_info_p50_ms": live_ms[len(live_ms) // 2],
            "live_info_max_ms": live_ms[-1],
            "peak_traced_mb": peak / 1e6,
            "elapsed_s": time.perf_counter() - started,
        }
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""Wall time of "exists but not yours" against "does not exist" (the denial timing channel).

Run:  python benchmarks/bench_timing.py [--probes 4000] [--rounds 3] [--json OUT]

An identified caller (``client_id`` "mallory") asks for a session of "alice"
(300 KB of state) and for a random id that does not exist, alternately, and
the wall time of each denial is recorded (``ProtocolHandler.handle`` in
process: no network jitter hides a difference). Per store and round it
reports both medians, their relative difference, and the held-out accuracy
of the best single-threshold classifier (fitted on the first half of the
samples, scored on the second): 0.5 is a coin toss.

The guarantee itself is proved by calls, not by time:
``tests/security/test_callers.py::test_not_yours_and_unknown_do_the_same_work``
records every Python and C call both denials make and requires them to be
the same. This module measures what that leaves on a real machine; the figure
moves with the machine's noise, which is why no unit test asserts it.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import benchlib

from stuisession import FileStore, MemoryStore, Policy, ProtocolHandler
from stuisession.ids import new_session_id
from stuisession.stores.base import SessionStore


def _classifier_accuracy(mine: list[int], absent: list[int]) -> float:
    """Held-out accuracy of a median-midpoint threshold fitted on the first halves."""
    half = len(mine) // 2
    m_med, a_med = statistics.median(mine[:half]), statistics.median(absent[:half])
    threshold = (m_med + a_med) / 2
    slower_is_mine = m_med > a_med
    right = sum((t > threshold) == slower_is_mine for t in mine[half:])
    right += sum((t > threshold) != slower_is_mine for t in absent[half:])
    return right / (len(mine) - half + len(absent) - half)


def one_round(store: SessionStore, probes: int) -> dict[str, Any]:
    ids = itertools.count()
    h = ProtocolHandler(store, Policy(rate_limit=None), dedup_ttl=None)

    def send(command: str, **p: Any) -> dict[str, Any]:
        return h.handle({"id": f"r{next(ids)}", "command": command, "parameters": p})

    sid = send("create_session", client_id="alice")["result"]["session_id"]
    big = {f"k{i}": "x" * 1000 for i in range(300)}
    send("update_session_state", session_id=sid, state_data=big)
    missing = new_session_id()

    def probe(target: str) -> int:
        message = {
            "id": "p",
            "command": "get_context_summary",
            "parameters": {"session_id": target, "client_id": "mallory"},
        }
        started = time.perf_counter_ns()
        reply = h.handle(message)
        elapsed = time.perf_counter_ns() - started
        if reply["status"] != "error":
            raise SystemExit(f"the probe was not denied: {reply}")
        return elapsed

    for _ in range(100):
        probe(sid)
        probe(missing)
    mine: list[int] = []
    absent: list[int] = []
    gc.collect()
    gc.disable()  # a collection lands in one sample only: keep it out of both
    try:
        for i in range(probes):  # interleaved, so load changes hit both alike
            if i % 64 == 63:
                gc.collect()
            if i % 2:
                mine.append(probe(sid))
                absent.append(probe(missing))
            else:
                absent.append(probe(missing))
                mine.append(probe(sid))
    finally:
        gc.enable()
    m_med, a_med = statistics.median(mine), statistics.median(absent)
    return {
        "n": probes,
        "foreign_p50_us": m_med / 1000,
        "unknown_p50_us": a_med / 1000,
        "p50_difference": (m_med - a_med) / a_med,
        "classifier_accuracy": _classifier_accuracy(mine, absent),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--probes", type=int, default=4000, help="probes of each kind per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", metavar="OUT", help="write the results as JSON")
    args = ap.parse_args()
    started = time.perf_counter()
    result: dict[str, Any] = {"probes": args.probes, "rounds": args.rounds, "stores": {}}
    with benchlib.scratch("timing") as tmp:
        for name in ("file", "memory"):
            rounds = []
            for r in range(args.rounds):
                store: SessionStore = (
                    FileStore(tmp / f"{name}{r}", fsync=False) if name == "file" else MemoryStore()
                )
                rounds.append(one_round(store, args.probes))
                d = rounds[-1]
                print(
                    f"{name:6} round {r}: foreign {d['foreign_p50_us']:8.1f} µs, unknown "
                    f"{d['unknown_p50_us']:8.1f} µs ({d['p50_difference']:+.2%}), "
                    f"classifier accuracy {d['classifier_accuracy']:.3f}",
                    flush=True,
                )
            result["stores"][name] = {
                "rounds": rounds,
                "worst_accuracy": max(d["classifier_accuracy"] for d in rounds),
                "worst_p50_difference": max(abs(d["p50_difference"]) for d in rounds),
            }
    result["elapsed_s"] = time.perf_counter() - started
    benchlib.emit(result, args.json)


if __name__ == "__main__":
    main()

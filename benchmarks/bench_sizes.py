"""Latency against session size: stuisession's FileStore beside Django's session backends.

Run:  python benchmarks/bench_sizes.py [--sizes 1,4,16,64,256,1024,4096] [--json OUT]

For each size (KiB of the state's JSON wire form, the heavy session's shape
scaled down or up) it measures the p50 of:

- stuisession FileStore (durable, through ``ProtocolHandler.handle_wire``):
  ``restore_session``; ``update_session_state`` of one variable; a full
  replacement of an untyped state of that size (``state_data``, mode replace);
  and the verify+decompress floor of the stored snapshot;
- Django's file backend and its database backend on SQLite
  (``synchronous=FULL``): ``load()`` and ``save()`` of the same data.

Each series stops after a time budget per size (at least a few samples), so
the largest sizes have fewer samples. No timing is asserted.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import benchlib
from bench_core import Client, verify_decompress_floor
from benchlib import measure, summary

from stuisession import FileStore, Policy, ProtocolHandler
from stuisession.stores.file.layout import session_stem

DEFAULT_SIZES = (1, 4, 16, 64, 256, 1024, 4096)


def run(sizes: list[int], budget: float, n: int) -> dict[str, Any]:
    points: list[dict[str, Any]] = []
    with benchlib.scratch("sizes") as root:
        store = FileStore(root / "store")
        # the snapshot limit (1 MB by default) is raised so the 4 MB point fits
        policy = Policy(rate_limit=None, max_snapshot_size=64 << 20)
        handler = ProtocolHandler(store, policy)
        c = Client(handler, "sz-")
        django = benchlib.django_peers(root)
        for kib in sizes:
            t0 = time.monotonic()
            # at the largest sizes one call takes seconds: no warm-up call for the writes
            warm = 1 if kib < 1024 else 0
            changes, history = benchlib.scaled_changes(kib * 1024)
            sid = c.create(f"owner-{kib}")
            c.call("update_session_state", session_id=sid, changes=changes, append_history=history)
            state = c.call("restore_session", session_id=sid)["result"]
            wire_bytes = len(json.dumps(state, separators=(",", ":")))
            stem = session_stem(root / "store", sid)
            blob = next((root / "store" / "sessions").rglob(f"{stem}.snap")).read_bytes()
            point: dict[str, Any] = {
                "kib": kib,
                "wire_bytes": wire_bytes,
                "snapshot_bytes": len(blob),
            }
            restore_wire = c.wire("restore_session", session_id=sid)
            point["stui_restore"] = summary(
                measure(lambda: handler.handle_wire(restore_wire), n, budget=budget, min_n=5)
            )
            point["floor_verify_decompress"] = verify_decompress_floor(store, blob, min(n, 50))[
                "verify_decompress"
            ]
            values = iter(range(10**9))
            point["stui_update_one_var"] = summary(
                measure(
                    lambda: c.call(
                        "update_session_state",
                        session_id=sid,
                        changes={"workspaces": {"default": {"variables": {"var0": next(values)}}}},
                    ),
                    n,
                    budget=budget,
                    min_n=3,
                )
            )
            versions = [benchlib.plain_state(kib * 1024, seed=s) for s in (1, 2)]
            point["plain_bytes"] = len(json.dumps(versions[0], separators=(",", ":")))
            rid = c.create(f"replace-{kib}")
            turn = iter(range(10**9))
            point["stui_replace"] = summary(
                measure(
                    lambda: c.call(
                        "update_session_state", session_id=rid, state_data=versions[next(turn) % 2]
                    ),
                    n,
                    budget=budget,
                    min_n=3,
                    warmup=warm,
                )
            )
            for kind in ("file", "db"):
                backend = django[kind]
                s = backend()
                s["state"] = state
                s.save()
                key = s.session_key
                point[f"django_{kind}_load"] = summary(
                    measure(lambda: backend(key).load(), n, budget=budget, min_n=5)
                )
                w = backend()
                w["state"] = versions[0]
                w.save()

                def save() -> None:
                    w["state"] = versions[next(turn) % 2]
                    w.save()

                point[f"django_{kind}_save"] = summary(
                    measure(save, n, budget=budget, min_n=3, warmup=warm)
                )
            point["elapsed_s"] = time.monotonic() - t0
            points.append(point)
            print(
                f"{kib:>5} KiB (wire {wire_bytes:>8} B, snap {len(blob):>7} B): restore "
                f"{point['stui_restore']['p50']:.2f} ms, one-var update "
                f"{point['stui_update_one_var']['p50']:.1f} ms, replace "
                f"{point['stui_replace']['p50']:.1f} ms | django file load "
                f"{point['django_file_load']['p50']:.2f} save "
                f"{point['django_file_save']['p50']:.2f} | db load "
                f"{point['django_db_load']['p50']:.2f} save {point['django_db_save']['p50']:.2f}"
                f"  [{point['elapsed_s']:.1f} s]",
                flush=True,
            )
        store.close()
    return {
        "points": points,
        "budget_s": budget,
        "max_n": n,
        "django_version": django["version"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--sizes",
        default=",".join(map(str, DEFAULT_SIZES)),
        help="comma-separated state sizes in KiB (default %(default)s)",
    )
    ap.add_argument("--budget", type=float, default=1.0, help="seconds per series and size")
    ap.add_argument("--n", type=int, default=200, help="samples per series (upper bound)")
    ap.add_argument("--json", metavar="OUT", help="write the results as JSON")
    args = ap.parse_args()
    t0 = time.monotonic()
    result = run([int(x) for x in args.sizes.split(",")], args.budget, args.n)
    result["elapsed_s"] = time.monotonic() - t0
    benchlib.emit(result, args.json)


if __name__ == "__main__":
    main()

"""Run the whole benchmark suite, store the results, render docs/performance.md.

Run:  python benchmarks/run_all.py [--quick] [--only core,sizes] [--no-render]

Each module runs in a process of its own (``python benchmarks/bench_X.py ...
--json OUT``), so one module's caches, garbage and threads do not disturb the
next. The results go to ``benchmarks/results/latest.json`` (committed with
the page it renders); ``--only`` re-runs some modules and keeps the others'
results from that file. Finally the targets are printed (figure, reference,
ratio, verdict) and the page and its plots are rendered (``render.py``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import benchlib
import render

HERE = Path(__file__).resolve().parent

#: (name, script, arguments for the full run, arguments for --quick)
MODULES: list[tuple[str, str, list[str], list[str]]] = [
    ("core", "bench_core.py", ["--n", "300"], ["--n", "60", "--quick"]),
    ("sizes", "bench_sizes.py", ["--budget", "0.6"], ["--budget", "0.3", "--sizes", "1,64,1024"]),
    (
        "redis_cas",
        "bench_redis_cas.py",
        ["--n", "400", "--rounds", "2", "--per-thread", "80"],
        ["--n", "100", "--rounds", "1", "--per-thread", "20"],
    ),
    (
        "redis_cluster",
        "bench_redis_cluster.py",
        ["--n", "300"],
        ["--n", "60"],
    ),
    ("sweep", "bench_sweep.py", ["--sessions", "10000"], ["--sessions", "1000"]),
    (
        "memory",
        "bench_memory.py",
        ["--sessions", "10000", "--update-budget", "8"],
        ["--sessions", "1000", "--update-budget", "3"],
    ),
    (
        "throughput",
        "bench_throughput.py",
        ["--clients", "32", "--duration", "10"],
        ["--clients", "8", "--duration", "3"],
    ),
    (
        "throughput_1worker",
        "bench_throughput.py",
        ["--clients", "32", "--duration", "6", "--server-workers", "1"],
        ["--clients", "8", "--duration", "2", "--server-workers", "1"],
    ),
    (
        "notify",
        "bench_notify.py",
        ["--duration", "10", "--cost-n", "400"],
        ["--duration", "3", "--cost-n", "100"],
    ),
    ("timing", "bench_timing.py", ["--probes", "4000"], ["--probes", "1000", "--rounds", "1"]),
    (
        "throughput_no_audit",
        "bench_throughput.py",
        ["--clients", "32", "--duration", "4", "--no-audit"],
        ["--clients", "8", "--duration", "2", "--no-audit"],
    ),
]


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def run_module(script: str, args: list[str]) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    try:
        t0 = time.monotonic()
        proc = subprocess.run(
            [sys.executable, str(HERE / script), *args, "--json", str(out)],
            cwd=benchlib.ROOT,
            check=False,
            timeout=900,
        )
        elapsed = time.monotonic() - t0
        if proc.returncode != 0 or not out.stat().st_size:
            return {"error": f"{script} exited with {proc.returncode}", "elapsed_s": elapsed}
        result: dict[str, Any] = json.loads(out.read_text())
        result.setdefault("elapsed_s", elapsed)
        result["module_wall_s"] = elapsed
        return result
    except subprocess.TimeoutExpired:
        return {"error": f"{script} timed out"}
    finally:
        out.unlink(missing_ok=True)


def print_targets(results: dict[str, Any]) -> None:
    print()
    print(f"{'target':16} {'measured':>16} {'goal':>34}  {'ratio':>14}  verdict  reference")
    for t in render.targets(results):
        verdict = {True: "met", False: "NOT MET", None: "n/a"}[t.met]
        print(f"{t.tid:16} {t.figure:>16} {t.goal:>34}  {t.rel:>14}  {verdict:7}  {t.reference}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--quick",
        action="store_true",
        help="a short smoke run: results to results/quick.json, the page is not rendered",
    )
    ap.add_argument(
        "--only", help="comma-separated module names: " + ", ".join(m[0] for m in MODULES)
    )
    ap.add_argument("--out", help=f"results JSON (default {render.RESULTS})")
    ap.add_argument("--no-render", action="store_true", help="do not write docs/performance.md")
    args = ap.parse_args()
    out = Path(
        args.out or (render.RESULTS.with_name("quick.json") if args.quick else render.RESULTS)
    )
    if args.quick:
        args.no_render = True
    only = set(args.only.split(",")) if args.only else None
    unknown = (only or set()) - {m[0] for m in MODULES}
    if unknown:
        ap.error(f"unknown module(s): {', '.join(sorted(unknown))}")
    started = time.monotonic()
    started_at = (
        datetime.datetime.now(datetime.UTC)
        .replace(microsecond=0)
        .isoformat()
        .replace("+00:00", "Z")
    )
    results: dict[str, Any] = {"meta": {}, "modules": {}}
    if only and out.exists():
        results = json.loads(out.read_text())
    meta = results.setdefault("meta", {})
    modules = results.setdefault("modules", {})
    loadavg_start = _loadavg()
    for name, script, full, quick in MODULES:
        if only and name not in only:
            continue
        print(f"\n=== {name}: {script} ===", flush=True)
        modules[name] = run_module(script, quick if args.quick else full)
        modules[name]["measured_at"] = datetime.datetime.now(datetime.UTC).isoformat(
            timespec="seconds"
        )
        print(f"=== {name}: {modules[name].get('module_wall_s', 0):.1f} s", flush=True)
    wall = time.monotonic() - started
    if only:
        meta["partial_reruns"] = [*meta.get("partial_reruns", []), sorted(only)]
    else:
        meta.update(
            started=started_at,
            wall_s=wall,
            quick=args.quick,
            loadavg_start=loadavg_start,
            loadavg_end=_loadavg(),
            machine=benchlib.machine(),
            git=benchlib.git_describe(),
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    print_targets(results)
    print(f"\nresults: {out}; suite wall time {wall:.0f} s")
    if not args.no_render:
        # from the file, exactly as `python benchmarks/render.py` would
        render.render(json.loads(out.read_text()), out)
        print(f"rendered {render.DOC.relative_to(benchlib.ROOT)}")


if __name__ == "__main__":
    main()

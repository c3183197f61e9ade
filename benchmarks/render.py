"""Render docs/performance.md and its plots from the benchmark results (JSON).

Run:  python benchmarks/render.py [benchmarks/results/latest.json]

``run_all.py`` calls :func:`render` after a run; running this module again
re-renders the page from the same JSON without measuring anything. The
explanation of a target that is not met is read from
``benchmarks/notes/<target id>.md`` when that file exists (so it survives
re-runs); otherwise the page shows a marked placeholder with the figures.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "latest.json"
DOC = ROOT / "docs" / "performance.md"
IMG_DIR = ROOT / "docs" / "img"
NOTES = ROOT / "benchmarks" / "notes"
SIZE_PLOT = "latency-vs-size.png"
MEMORY_PLOT = "memory-rss.png"
MB = 1_000_000


# -- formatting ---------------------------------------------------------------------------
def ms(x: float | None) -> str:
    """A latency in ms with sensible precision (us below 1 ms)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if x < 1:
        return f"{x * 1000:.0f} µs"
    if x < 10:
        return f"{x:.2f} ms"
    if x < 100:
        return f"{x:.1f} ms"
    return f"{x:.0f} ms"


def size(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / 1024 / 1024:.2f} MiB"


def ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}x"


def _get(d: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def _p50(d: Any, *path: str) -> float | None:
    v = _get(d, *path, "p50")
    return float(v) if isinstance(v, (int, float)) else None


# -- targets ------------------------------------------------------------------------------
class Target:
    """One line of the issue's targets, evaluated on the results."""

    def __init__(
        self,
        tid: str,
        title: str,
        goal: str,
        figure: str,
        reference: str,
        rel: str,
        met: bool | None,
        why: str = "",
    ) -> None:
        self.tid = tid
        self.title = title
        self.goal = goal
        self.figure = figure
        self.reference = reference
        self.rel = rel
        self.met = met
        self.why = why  # the measured facts for the placeholder

    @property
    def verdict(self) -> str:
        if self.met is None:
            return "not measured"
        return "**met**" if self.met else "**not met**"


def _lt(value: float | None, limit: float | None, *, strict: bool = False) -> bool | None:
    if value is None or limit is None:
        return None
    return value < limit if strict else value <= limit


def targets(r: dict[str, Any]) -> list[Target]:
    m = r.get("modules", {})
    core = m.get("core", {})
    out: list[Target] = []
    floor_new = _p50(core, "floors", "new_file_600")
    floor_2k = _p50(core, "floors", "replace_2k")
    floor_1m = _p50(core, "floors", "replace_1m")

    # create_session
    f = _p50(core, "create", "file")
    lim = None if floor_new is None else 1.5 * floor_new
    out.append(
        Target(
            "create-file",
            "`create_session`, FileStore (durable), p50",
            "≤ 1.5x the durable new-file write floor",
            ms(f),
            f"floor {ms(floor_new)}",
            ratio(f / floor_new) if f and floor_new else "n/a",
            _lt(f, lim),
            f"p50 {ms(f)} = {ratio(f / floor_new) if f and floor_new else 'n/a'} the floor "
            f"{ms(floor_new)} (limit {ms(lim)})",
        )
    )
    f = _p50(core, "create", "memory")
    out.append(
        Target(
            "create-memory",
            "`create_session`, MemoryStore, p50",
            "< 50 µs",
            ms(f),
            "50 µs",
            ratio(f / 0.05) if f else "n/a",
            _lt(f, 0.05, strict=True),
            f"p50 {ms(f)} against 50 µs",
        )
    )
    f = _p50(core, "create", "redis")
    out.append(
        Target(
            "create-redis",
            "`create_session`, RedisStore (local redis-server), p50",
            "< 0.5 ms",
            ms(f),
            "0.5 ms",
            ratio(f / 0.5) if f else "n/a",
            _lt(f, 0.5, strict=True),
            f"p50 {ms(f)} against 0.5 ms",
        )
    )

    # restore
    for case, label in (("1mb", "~1 MB state"), ("heavy", "the heavy session")):
        d = _get(core, "restore", case) or {}
        f = _p50(d, "file")
        fl = _p50(d, "verify_decompress")
        dj = _p50(core, "django", "file", f"load_{case}")
        wire = size(d.get("wire_bytes", 0))
        out.append(
            Target(
                f"restore-{case}-abs",
                f"`restore_session` of {label} ({wire}), p50",
                "≤ 5 ms",
                ms(f),
                "5 ms",
                ratio(f / 5) if f else "n/a",
                _lt(f, 5.0),
                f"p50 {ms(f)} against 5 ms",
            )
        )
        out.append(
            Target(
                f"restore-{case}-floor",
                f"`restore_session` of {label}: ratio to verify+decompress",
                "≤ 3x the floor",
                ms(f),
                f"floor {ms(fl)}",
                ratio(f / fl) if f and fl else "n/a",
                None if not (f and fl) else f / fl <= 3,
                f"p50 {ms(f)} = {ratio(f / fl) if f and fl else 'n/a'} the floor {ms(fl)}",
            )
        )
        out.append(
            Target(
                f"restore-{case}-django",
                f"`restore_session` of {label} vs Django file backend `load()`",
                "≥ 2x faster",
                ms(f),
                f"Django {ms(dj)}",
                f"{dj / f:.1f}x faster" if f and dj else "n/a",
                None if not (f and dj) else dj / f >= 2,
                f"p50 {ms(f)}; Django file load {ms(dj)} ({ratio(dj / f) if f and dj else 'n/a'})",
            )
        )

    # update
    f = _p50(core, "update", "one_var_1mb")
    out.append(
        Target(
            "update-one-var",
            "`update_session_state` of one variable of a ~1 MB session, p50",
            "≤ 2 ms",
            ms(f),
            f"2 ms; durable 2 KB replace floor {ms(floor_2k)}",
            ratio(f / 2) if f else "n/a",
            _lt(f, 2.0),
            f"p50 {ms(f)} against 2 ms (durable 2 KB replace floor {ms(floor_2k)})",
        )
    )
    f = _p50(core, "update", "replace_1mb")
    dj = _p50(core, "django", "file", "save_1mb")
    out.append(
        Target(
            "update-replace",
            "full ~1 MB replacement (`state_data`) vs Django file backend `save()`",
            "≤ 0.5x Django's `save()`",
            ms(f),
            f"Django {ms(dj)}",
            ratio(f / dj) if f and dj else "n/a",
            None if not (f and dj) else f <= 0.5 * dj,
            f"p50 {ms(f)} = {ratio(f / dj) if f and dj else 'n/a'} Django's {ms(dj)} "
            f"(limit {ms(0.5 * dj) if dj else 'n/a'})",
        )
    )
    parse_1m = _p50(core, "floors", "parse_1m")
    floor = None if floor_1m is None or parse_1m is None else floor_1m + parse_1m
    out.append(
        Target(
            "update-replace-floor",
            "full ~1 MB replacement: ratio to the durable 1 MB replace + one parse",
            "≤ 3x the floor",
            ms(f),
            f"floor {ms(floor)} (replace {ms(floor_1m)} + json.loads {ms(parse_1m)})",
            ratio(f / floor) if f and floor else "n/a",
            None if not (f and floor) else f <= 3 * floor,
            f"p50 {ms(f)} = {ratio(f / floor) if f and floor else 'n/a'} the floor {ms(floor)}",
        )
    )

    # throughput
    tp = m.get("throughput", {})
    ops = tp.get("ops_per_s")
    p99 = _get(tp, "latency", "p99")
    out.append(
        Target(
            "throughput-ops",
            f"bridge throughput, {tp.get('clients', 32)} client processes, small durable updates",
            "≥ 2,000 acknowledged ops/s",
            "n/a" if ops is None else f"{ops:,.0f} ops/s",
            "2,000 ops/s",
            "n/a" if ops is None else ratio(ops / 2000),
            None if ops is None else ops >= 2000,
            "n/a" if ops is None else f"{ops:,.0f} ops/s against 2,000",
        )
    )
    out.append(
        Target(
            "throughput-p99",
            "bridge latency under that load, p99",
            "< 50 ms",
            ms(p99),
            "50 ms",
            ratio(p99 / 50) if p99 else "n/a",
            _lt(p99, 50.0, strict=True),
            f"p99 {ms(p99)} against 50 ms",
        )
    )
    errs = tp.get("error_count")
    gaps = tp.get("revision_gaps")
    out.append(
        Target(
            "throughput-errors",
            "errors (and lost acknowledged updates) under that load",
            "zero",
            "n/a" if errs is None else f"{errs} errors, {gaps} lost",
            "0",
            "",
            None if errs is None else errs == 0 and gaps == 0,
            f"errors {tp.get('errors')}, revision gaps {gaps}",
        )
    )

    # memory
    mem = m.get("memory", {})
    runs = mem.get("runs", {})
    default = runs.get("default", {})
    off = runs.get("cache_off")
    mgmt = mem.get("management_mb")
    n_sessions = _get(mem, "store", "sessions")
    with_cache = default.get("added_mb")
    # judged with the defaults (the cache included): the budget holds without tuning
    out.append(
        Target(
            "memory-added",
            f"RSS added by session management, {n_sessions or 'n/a'} stored sessions "
            "(a sample served, not all loaded), default settings",
            "< 10 MB",
            "n/a" if with_cache is None else f"{with_cache:.1f} MB (defaults)",
            "n/a" if mgmt is None or not off else f"{mgmt:.1f} MB with the cache off",
            "n/a" if with_cache is None else ratio(with_cache / 10),
            None if with_cache is None else with_cache < 10,
            "n/a"
            if with_cache is None
            else f"{with_cache:.1f} MB with the defaults against 10 MB"
            + (f"; {mgmt:.1f} MB with the cache off" if off and mgmt is not None else ""),
        )
    )
    peak_mb = default.get("peak_all_mb")
    cache = mem.get("cache_setting")
    bound_mb = _cache_bound_mb(cache)
    limit = 10 + (bound_mb or 0)
    est = max((p.get("cache_used") or 0 for p in default.get("curve", [])), default=0) / MB
    out.append(
        Target(
            "memory-bounded",
            f"RSS while restoring all {default.get('restored', 'n/a')} and updating "
            f"{default.get('updated', 'n/a')} stored sessions (default cache)",
            "< 10 MB above baseline"
            + (f" + the cache bound ({bound_mb:.0f} MB)" if bound_mb else ""),
            "n/a" if peak_mb is None else f"peak {peak_mb:.1f} MB",
            "cache: "
            + _cache_text(cache)
            + (f"; its own estimate peaked at {est:.1f} MB" if est else ""),
            "n/a" if peak_mb is None else ratio(peak_mb / limit),
            None if peak_mb is None else peak_mb < limit,
            "n/a"
            if peak_mb is None
            else f"RSS peaked {peak_mb:.1f} MB above the baseline against a limit of "
            f"{limit:.0f} MB"
            + (f"; the cache's own estimate peaked at {est:.1f} MB" if est else ""),
        )
    )

    # storage
    for case, limit_b, label in (
        ("heavy", 300_000, "heavy session"),
        ("typical", 16_000, "typical session (50 variables, 200 objects, 5 inspectors)"),
    ):
        st = _get(core, "storage", case) or {}
        total = st.get("total_bytes")
        out.append(
            Target(
                f"storage-{case}",
                f"on disk: {label}",
                f"< {limit_b // 1000} KB",
                "n/a" if total is None else f"{total / 1000:.1f} KB",
                f"snapshot {st.get('snapshot_bytes', 0) / 1000:.1f} KB; "
                f"Django file {st.get('django_file_bytes', 0) / 1000:.1f} KB",
                "n/a" if total is None else ratio(total / limit_b),
                None if total is None else total < limit_b,
                "n/a" if total is None else f"{total} B against {limit_b} B",
            )
        )

    # change notices (bench_notify.py)
    nt = m.get("notify", {})
    p99 = _get(nt, "latency", "latency_ms", "p99")
    p99 = float(p99) if isinstance(p99, (int, float)) else None
    rate = _get(nt, "latency", "rate")
    subs = _get(nt, "latency", "subscribers")
    out.append(
        Target(
            "notify-latency",
            f"notice latency, ack to subscriber, at {rate} updates/s, {subs} subscribers, p99",
            "< 20 ms",
            ms(p99),
            "20 ms",
            ratio(p99 / 20) if p99 is not None else "n/a",
            _lt(p99, 20.0, strict=True),
            f"p99 {ms(p99)} against 20 ms; lost {_get(nt, 'latency', 'notices_lost')}",
        )
    )
    added = _get(nt, "bridge_update", "added_p50")
    added = float(added) if isinstance(added, (int, float)) else None
    out.append(
        Target(
            "notify-update-cost",
            f"update through the bridge, notices on vs off (file store, {subs} subscribers "
            "in their own process), median of 5 rounds' p50 ratio",
            "< 10% added",
            "n/a" if added is None else f"{added:+.1%}",
            f"off {ms(_p50(nt, 'bridge_update', 'off'))}, on {ms(_p50(nt, 'bridge_update', 'on'))}",
            "n/a" if added is None else ratio(max(added, 0.0) / 0.10),
            None if added is None else added < 0.10,
            "n/a" if added is None else f"{added:+.1%} against 10%",
        )
    )
    one = _get(nt, "bridge_update_one_subscriber", "added_p50")
    one = float(one) if isinstance(one, (int, float)) else None
    out.append(
        Target(
            "notify-update-cost-1",
            "update through the bridge, notices on vs off (file store, 1 subscriber "
            "in its own process), median of 5 rounds' p50 ratio",
            "< 10% added",
            "n/a" if one is None else f"{one:+.1%}",
            "off "
            + ms(_p50(nt, "bridge_update_one_subscriber", "off"))
            + ", on "
            + ms(_p50(nt, "bridge_update_one_subscriber", "on")),
            "n/a" if one is None else ratio(max(one, 0.0) / 0.10),
            None if one is None else one < 0.10,
            "n/a" if one is None else f"{one:+.1%} against 10%",
        )
    )

    tm = m.get("timing", {}).get("stores", {})
    worst = max((d["worst_accuracy"] for d in tm.values()), default=None)
    diff = max((d["worst_p50_difference"] for d in tm.values()), default=None)
    out.append(
        Target(
            "denial-timing",
            '"not yours" against "does not exist": held-out accuracy of a threshold '
            "classifier on in-process denial times (file and memory stores, worst round)",
            "≤ 0.6 (0.5 is a coin toss)",
            "n/a" if worst is None else f"{worst:.3f}",
            "0.6",
            "n/a" if worst is None else ratio(worst / 0.6),
            None if worst is None else worst <= 0.6,
            "n/a"
            if worst is None or diff is None
            else f"accuracy {worst:.3f}, medians {diff:.1%} apart at most",
        )
    )

    wall = _get(r, "meta", "wall_s")
    out.append(
        Target(
            "make-bench-time",
            "`make bench` wall time",
            "≤ 5 min",
            "n/a" if wall is None else f"{wall / 60:.1f} min",
            "5 min",
            "n/a" if wall is None else ratio(wall / 300),
            None if wall is None else wall <= 300,
            "n/a" if wall is None else f"{wall:.0f} s against 300 s",
        )
    )
    return out


def _cache_text(cache: Any) -> str:
    if not cache:
        return "FileStore has no cache keyword (nothing cached)"
    return ", ".join(f"`{k}={v!r}`" for k, v in cache.items())


def _cache_bound_mb(cache: Any) -> float | None:
    """The cache bound in MB when the keyword names bytes (else unknown)."""
    if not isinstance(cache, dict):
        return None
    for name, value in cache.items():
        if "byte" in name and isinstance(value, (int, float)):
            return float(value) / MB
    return None


# -- plots --------------------------------------------------------------------------------
def plot_sizes(points: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [p["wire_bytes"] / 1024 for p in points]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    series_left = [
        ("stui_restore", "stuisession restore_session (FileStore)", "C0", "o-"),
        ("floor_verify_decompress", "floor: HMAC verify + zstd decompress", "C7", "x--"),
        ("django_file_load", "Django file backend load()", "C1", "s-"),
        ("django_db_load", "Django db backend (SQLite) load()", "C2", "^-"),
    ]
    series_right = [
        ("stui_update_one_var", "stuisession update: one variable", "C0", "o-"),
        ("stui_replace", "stuisession update: full replacement", "C3", "D-"),
        ("django_file_save", "Django file backend save()", "C1", "s-"),
        ("django_db_save", "Django db backend (SQLite, sync FULL) save()", "C2", "^-"),
    ]
    for ax, series, title in (
        (left, series_left, "Restore / load (p50)"),
        (right, series_right, "Update / save (p50)"),
    ):
        for key, label, color, style in series:
            ys = [_p50(p, key) for p in points]
            pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y]
            if pts:
                ax.plot(*zip(*pts, strict=True), style, color=color, label=label, ms=5)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("session state size, wire-form JSON (KiB)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    left.set_ylabel("latency, p50 (ms, log scale)")
    fig.suptitle("stuisession vs Django session backends: latency against session size")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_memory(
    curve: list[dict[str, Any]], baseline_kib: int, bound_mb: float | None, path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    offset = 0
    for phase, color in (("restore", "C0"), ("update", "C3")):
        pts = [p for p in curve if p["phase"] == phase]
        if not pts:
            continue
        xs = [offset + p["done"] for p in pts]
        ys = [(p["VmRSS"] - baseline_kib) * 1024 / MB for p in pts]
        ax.plot(xs, ys, "o-", color=color, ms=3, label=f"RSS above baseline: {phase} all")
        est = [
            (x, p["cache_used"] / MB) for x, p in zip(xs, pts, strict=True) if p.get("cache_used")
        ]
        if est:
            ax.plot(*zip(*est, strict=True), ":", color=color, label=f"cache estimate: {phase}")
        offset = xs[-1]
        if phase == "restore":
            ax.axvline(offset, color="C7", lw=0.8)
    ax.axhline(10, color="k", ls="--", lw=1, label="10 MB")
    if bound_mb:
        ax.axhline(10 + bound_mb, color="C7", ls="--", lw=1, label="10 MB + cache bound")
    ax.set_xlabel("requests served in the all-sessions phase (restores, then updates)")
    ax.set_ylabel("MB")
    ax.set_title("Server RSS while touching every stored session (default cache)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- the page -----------------------------------------------------------------------------
def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def _stat_row(label: str, s: Any, note: str = "") -> list[str]:
    if not isinstance(s, dict):
        return [label, "n/a", "n/a", "", note]
    return [label, ms(s["p50"]), ms(s["p99"]), str(s["n"]), note]


def _machine(meta: dict[str, Any]) -> list[str]:
    mach = meta.get("machine", {})
    fs = mach.get("filesystem", {})
    libs = mach.get("libraries", {})
    rows = [
        ["CPU", f"{mach.get('cpu')} ({mach.get('cores')} cores)"],
        ["RAM", f"{mach.get('ram_gib')} GiB"],
        ["kernel", str(mach.get("kernel"))],
        [
            "benchmark directory",
            f"`{_rel(mach.get('bench_dir', '?'))}`: {fs.get('type')} on {fs.get('device')} "
            f"(mount `{fs.get('mount')}`, options `{fs.get('options')}`)",
        ],
        ["Python", f"{mach.get('python_impl')} {mach.get('python')}"],
        ["libraries", ", ".join(f"{k} {v}" for k, v in libs.items() if v)],
        ["source", f"`{meta.get('git', '?')}`"],
        ["run", f"{meta.get('started', '?')}, wall time {meta.get('wall_s', 0):.0f} s"],
        [
            "load average",
            f"{meta.get('loadavg_start', '?')} at the start, {meta.get('loadavg_end', '?')} "
            "at the end (1/5/15 min)",
        ],
    ]
    return _table(["", ""], rows)


def _rel(p: str) -> str:
    try:
        return str(Path(p).resolve().relative_to(ROOT))
    except ValueError:
        return p


def _core_section(core: dict[str, Any]) -> list[str]:
    if not core or "error" in core:
        return [f"Not measured: {core.get('error', 'module missing')}", ""]
    fl = core["floors"]
    rows = [
        _stat_row("floor: durable new-file write, 600 B", fl["new_file_600"]),
        _stat_row("floor: durable replace, 2 KB", fl["replace_2k"]),
        _stat_row("floor: durable replace, 1 MB", fl["replace_1m"]),
    ]
    for name, s in core["create"].items():
        note = ""
        if name == "file":
            note = f"{s['p50'] / fl['new_file_600']['p50']:.2f}x the new-file floor"
        rows.append(_stat_row(f"`create_session`, {name}", s, note))
    for name, s in core["small"].items():
        rows.append(_stat_row(f"`update_session_state` (~100 B `state_data`), {name}", s["update"]))
        rows.append(_stat_row(f"`restore_session` (small), {name}", s["restore"]))
    for case, d in core["restore"].items():
        wire = size(d["wire_bytes"])
        snap = size(d["snapshot_bytes"])
        f = d["file"]["p50"]
        rows.append(
            _stat_row(
                f"`restore_session` {case} ({wire} wire, {snap} stored), file",
                d["file"],
                f"{f / d['verify_decompress']['p50']:.2f}x the floor",
            )
        )
        rows.append(
            _stat_row(f"floor: HMAC verify + zstd decompress, {case}", d["verify_decompress"])
        )
        rows.append(
            _stat_row(f"codec open + decrypt + decompress, {case}", d["codec_open"], "reference")
        )
        for kind in ("file", "db"):
            s = core["django"][kind].get(f"load_{case}")
            rows.append(
                _stat_row(
                    f"Django {kind} backend `load()`, {case}",
                    s,
                    f"{s['p50'] / f:.1f}x stuisession" if s else "",
                )
            )
    for key, s in core["update"].items():
        if isinstance(s, dict):
            label = {
                "one_var_1mb": "`update_session_state`, one variable of the ~1 MB session",
                "one_var_heavy": "`update_session_state`, one variable of the heavy session",
                "replace_1mb": "`update_session_state`, full replacement "
                f"({size(core['update'].get('replace_1mb_bytes', 0))} `state_data`)",
            }.get(key, key)
            rows.append(_stat_row(label + ", file", s))
    for kind in ("file", "db"):
        s = core["django"][kind].get("save_1mb")
        rows.append(_stat_row(f"Django {kind} backend `save()`, same data", s))
    lines = _table(["operation", "p50", "p99", "n", "note"], rows)
    srows = []
    for case, st in core["storage"].items():
        files = ", ".join(f"`{k}` {v:,} B" for k, v in st["files"].items())
        srows.append(
            [
                case,
                size(st["wire_bytes"]),
                f"{st['snapshot_bytes']:,} B",
                f"{st['total_bytes']:,} B ({files})",
                f"{st['django_file_bytes']:,} B",
            ]
        )
    lines += [
        "On disk (file store, after `create_session` + one update that builds the state):",
        "",
    ]
    lines += _table(
        ["session", "state (wire JSON)", "snapshot", "all files of the session", "Django file"],
        srows,
    )
    settings = core.get("settings", {})
    lines += [
        "Settings: "
        + "; ".join(f"{k}: {v}" for k, v in settings.items() if k != "file_store_cache"),
        "",
    ]
    return lines


def _sizes_section(sizes: dict[str, Any]) -> list[str]:
    if not sizes or "error" in sizes:
        return [f"Not measured: {sizes.get('error', 'module missing')}", ""]
    rows = []
    for p in sizes["points"]:
        rows.append(
            [
                size(p["wire_bytes"]),
                size(p["snapshot_bytes"]),
                ms(_p50(p, "stui_restore")),
                ms(_p50(p, "floor_verify_decompress")),
                ms(_p50(p, "django_file_load")),
                ms(_p50(p, "django_db_load")),
                ms(_p50(p, "stui_update_one_var")),
                ms(_p50(p, "stui_replace")),
                ms(_p50(p, "django_file_save")),
                ms(_p50(p, "django_db_save")),
            ]
        )
    return [
        f"![Latency against session size]({'img/' + SIZE_PLOT})",
        "",
        *_table(
            [
                "state",
                "snapshot",
                "restore",
                "floor",
                "Django file load",
                "Django db load",
                "update 1 var",
                "full replace",
                "Django file save",
                "Django db save",
            ],
            rows,
        ),
        f"p50 of each; each series stops after {sizes.get('budget_s', '?')} s per size "
        "(at least 3 to 5 samples), so the largest sizes rest on few samples. The state has the "
        "heavy session's shape scaled; the full replacement writes an untyped `state_data` of "
        "about the same size; Django holds the same data as JSON.",
        "",
    ]


def _throughput_section(tp: dict[str, Any], label: str) -> list[str]:
    if not tp or "error" in tp:
        return [f"Not measured: {tp.get('error', 'module missing')}", ""]
    s = tp.get("latency") or {}
    rows = [
        ["acknowledged durable updates", f"{tp['acked_ops']:,} in {tp['duration_s']:.0f} s"],
        ["throughput", f"{tp['ops_per_s']:,.0f} ops/s"],
        [
            "latency p50 / p90 / p99 / max",
            " / ".join(ms(s.get(k)) for k in ("p50", "p90", "p99", "max")),
        ],
        ["errors", str(tp["errors"] or 0)],
        ["lost acknowledged updates (revision gaps)", str(tp["revision_gaps"])],
        [
            "CPU time in the window",
            f"server {tp['server_cpu_s']:.1f} s, clients {tp['clients_cpu_s']:.1f} s "
            f"(of {tp['duration_s'] * 2:.0f} core-seconds on 2 cores)",
        ],
        ["server worker threads", str(tp["server_workers"])],
    ]
    return [f"{label}: {tp['setup']}.", "", *_table(["", ""], rows)]


def _memory_section(mem: dict[str, Any]) -> list[str]:
    if not mem or "error" in mem:
        return [f"Not measured: {mem.get('error', 'module missing')}", ""]
    runs = mem["runs"]
    d = runs["default"]

    def mb(kib: int) -> str:
        return f"{kib * 1024 / MB:.1f} MB"

    def above(kib: int, base: int) -> str:
        return f"+{(kib - base) * 1024 / MB:.2f} MB"

    rows = []
    for name, label in (("cache_off", "cache off"), ("default", "default cache")):
        x = runs.get(name)
        if not x:
            continue
        rss = x["rss_kib"]
        base = rss["baseline"]["VmRSS"]
        rows += [
            [label, "baseline (imports done, store not opened)", mb(base), ""],
            [
                label,
                "FileStore + ProtocolHandler opened",
                mb(rss["opened"]["VmRSS"]),
                above(rss["opened"]["VmRSS"], base),
            ],
            [
                label,
                "after the sample of requests",
                mb(rss["sample"]["VmRSS"]),
                above(rss["sample"]["VmRSS"], base),
            ],
        ]
        if "curve" in x:
            peak = max(p["VmRSS"] for p in x["curve"])
            rows += [
                [
                    label,
                    f"peak while restoring {x['restored']:,} and updating {x['updated']:,}",
                    mb(peak),
                    above(peak, base),
                ],
                [label, "at the end", mb(rss["end"]["VmRSS"]), above(rss["end"]["VmRSS"], base)],
            ]
    store = mem["store"]
    sample = d.get("sample_requests", {})
    lines = [
        f"A fresh process opens a file store of {store['sessions']:,} typical sessions "
        f"({size(store['state_json_bytes'])} of state each, {size(store['snapshot_bytes'])} "
        f"sealed) and serves a sample: {', '.join(f'{v} {k}' for k, v in sample.items())}. "
        f"Decoded-session cache: {_cache_text(mem.get('cache_setting'))}. Reply cache "
        f"(deduplication): at most {d['reply_cache']['max_entries']} entries / "
        f"{(d['reply_cache']['max_bytes'] or 0) / MB:.0f} MB. Failures: "
        f"{sum(x['failures'] for x in runs.values())}.",
        "",
        *_table(["process", "point", "RSS", "above baseline"], rows),
    ]
    if d.get("curve"):
        lines += [
            f"![RSS while touching every session](img/{MEMORY_PLOT})",
            "",
            f"Restoring all took {d['restore_all_s']:.1f} s; updating {d['updated']:,} "
            f"took {d['update_s']:.1f} s"
            + (
                f" (the phase stops after {mem['update_budget_s']:.0f} s; "
                "`--update-budget 0` updates every session)."
                if d["updated"] < d["restored"]
                else "."
            ),
            "",
        ]
    return lines


def _redis_section(rc: dict[str, Any]) -> list[str]:
    if not rc or "error" in rc:
        return [f"Not measured: {rc.get('error', 'module missing')}", ""]
    rows = []
    for case, d in rc["writes"].items():
        for cas, s in d.items():
            rows.append(
                [
                    f"uncontended CAS write, {case}, {cas}",
                    f"{s['p50_us']:.0f} µs",
                    f"{s['p99_us']:.0f} µs",
                    f"{s['p50_us'] / rc['ping_p50_us']:.1f} PING round trips",
                ]
            )
    c = rc["contended"]
    for cas in ("lua", "watch"):
        rows.append(
            [
                f"contended, {c['threads']} threads, {cas}",
                f"{c[cas]['commits_per_s']:.0f} commits/s",
                "",
                f"{c[cas]['conflicts']} conflicts",
            ]
        )
    return [
        f"`benchmarks/bench_redis_cas.py`: PING round trip p50 {rc['ping_p50_us']:.0f} µs. "
        f"Faster for small snapshots: **{rc['faster_small']}** (Lua is the default).",
        "",
        *_table(["case", "p50", "p99", "note"], rows),
    ]


def _sweep_section(sw: dict[str, Any]) -> list[str]:
    if not sw or "error" in sw:
        return [f"Not measured: {sw.get('error', 'module missing')}", ""]
    return [
        f"`benchmarks/bench_sweep.py --sessions {sw['sessions']}` (90% expired; "
        "`--sessions 100000` for the full-scale run):",
        "",
        *_table(
            ["", ""],
            [
                ["expired sessions removed", f"{sw['expired']:,} in {sw['sweep_s']:.1f} s"],
                ["steps (batch)", f"{sw['steps']} (≤ {sw['batch']})"],
                ["longest step", ms(sw["longest_step_ms"])],
                [
                    "`get_session_info` between steps",
                    f"p50 {ms(sw['live_info_p50_ms'])}, max {ms(sw['live_info_max_ms'])}",
                ],
                ["peak traced memory of the sweep", f"{sw['peak_traced_mb']:.1f} MB"],
            ],
        ),
    ]


def render_page(r: dict[str, Any], results_path: Path) -> str:
    meta = r.get("meta", {})
    m = r.get("modules", {})
    ts = targets(r)
    lines = [
        "# Performance",
        "",
        "<!-- GENERATED by `make bench` (benchmarks/run_all.py) from "
        f"{_rel(str(results_path))}; do not edit by hand: re-render with "
        "`python benchmarks/render.py`. Explanations of unmet targets live in "
        "benchmarks/notes/<target id>.md. -->",
        "",
        "Every figure on this page comes from one run of `make bench`, which runs the "
        f"benchmark modules in `benchmarks/`, stores the results in "
        f"`{_rel(str(results_path))}` and renders this page from them. Floors and peers "
        "are measured in the same run, on the same disk. Latencies are wall-clock times "
        "of single requests through `ProtocolHandler.handle_wire` (bytes in, bytes out, "
        "as the bridge calls it) unless said otherwise; p50 is the median.",
        "",
    ]
    busy = _busy(meta)
    if busy:
        lines += [
            "!!! warning",
            f"    {busy}",
            "",
        ]
    lines += ["## Machine", "", *_machine(meta)]
    lines += ["## Targets", ""]
    rows = [
        [
            f"[{t.tid}](#{t.tid})" if t.met is False else t.tid,
            t.title,
            t.goal,
            t.figure,
            t.reference,
            t.rel,
            t.verdict,
        ]
        for t in ts
    ]
    lines += _table(["id", "target", "goal", "measured", "floor / peer", "ratio", "verdict"], rows)
    met = sum(1 for t in ts if t.met)
    lines += [f"{met} of {len(ts)} targets met.", ""]
    lines += ["## Latency against session size", "", *_sizes_section(m.get("sizes", {}))]
    lines += ["## Core operations", "", *_core_section(m.get("core", {}))]
    lines += [
        "## Throughput through the ZeroMQ bridge",
        "",
        *_throughput_section(m.get("throughput", {}), "`benchmarks/bench_throughput.py`"),
    ]
    if m.get("throughput_no_audit"):
        lines += [
            "For comparison, the same load with the audit log off (`serve --audit off`), shorter:",
            "",
            *_throughput_section(m["throughput_no_audit"], "Audit off"),
        ]
    lines += ["## Memory", "", *_memory_section(m.get("memory", {}))]
    lines += ["## Redis compare-and-swap", "", *_redis_section(m.get("redis_cas", {}))]
    lines += ["## Expiry sweep", "", *_sweep_section(m.get("sweep", {}))]
    unmet = [t for t in ts if t.met is False]
    if unmet:
        lines += ["## Why not met", ""]
        for t in unmet:
            lines += [f"### {t.tid}", ""]
            lines += [f"{t.title}: goal {t.goal}; measured {t.why}.", ""]
            note = NOTES / f"{t.tid}.md"
            if note.exists():
                lines += [note.read_text(encoding="utf-8").strip(), ""]
            else:
                lines += [
                    '!!! note "Placeholder: why not met"',
                    "    *To be written by the lead.* Put the explanation in "
                    f"`benchmarks/notes/{t.tid}.md`; it replaces this placeholder the next "
                    "time the page is rendered.",
                    "",
                ]
    lines += [
        "## Running the benchmarks",
        "",
        "```sh",
        "make bench                                  # everything; writes this page (~5 min)",
        "python benchmarks/render.py                 # re-render from results/latest.json",
        "python benchmarks/bench_core.py             # one module, printed",
        "python benchmarks/bench_sweep.py --sessions 100000   # the full-scale sweep",
        "python benchmarks/bench_memory.py --update-budget 0  # update all 10,000 sessions",
        "```",
        "",
        "Scratch stores go to `benchmarks/.work/` (or `$STUISESSION_BENCH_DIR`): keep them on "
        "the disk you want to measure; a tmpfs makes every fsync free. The Django peers "
        "(file backend, and the database backend on SQLite with `synchronous=FULL`) and "
        "matplotlib come with the `bench` extra (`pip install -e '.[bench]'`). Nothing is "
        "asserted: the suite reports.",
        "",
    ]
    return "\n".join(lines)


def _busy(meta: dict[str, Any]) -> str:
    loads = [meta.get("loadavg_start"), meta.get("loadavg_end")]
    cores = _get(meta, "machine", "cores") or 1
    worst = max((float(x.split()[0]) for x in loads if isinstance(x, str)), default=0.0)
    if worst > 0.5 * cores:
        return (
            f"The machine was not idle during this run (1-minute load average up to "
            f"{worst:.2f} on {cores} cores before or after it): other work competed for the "
            "CPU and the disk, so latencies are higher and noisier than on an idle machine."
        )
    return ""


def render(r: dict[str, Any], results_path: Path = RESULTS, doc: Path = DOC) -> None:
    """Write the page and its plots."""
    sizes = _get(r, "modules", "sizes", "points")
    if sizes:
        plot_sizes(sizes, IMG_DIR / SIZE_PLOT)
    d = _get(r, "modules", "memory", "runs", "default")
    if isinstance(d, dict) and d.get("curve"):
        bound = _cache_bound_mb(_get(r, "modules", "memory", "cache_setting"))
        plot_memory(d["curve"], d["rss_kib"]["baseline"]["VmRSS"], bound, IMG_DIR / MEMORY_PLOT)
    doc.write_text(render_page(r, results_path), encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="?", default=str(RESULTS))
    args = ap.parse_args()
    path = Path(args.results)
    render(json.loads(path.read_text()), path)
    print(f"wrote {DOC.relative_to(ROOT)} and plots in {IMG_DIR.relative_to(ROOT)}/")


if __name__ == "__main__":
    main()

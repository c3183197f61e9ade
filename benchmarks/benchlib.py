"""Shared helpers of the benchmark suite (not a benchmark itself).

Timing (:func:`measure`, :func:`summary`), the scratch directory on the disk
being measured (:func:`scratch`), the states measured (:func:`scaled_changes`,
:func:`typical_changes`), the Django peers (:func:`django_peers`), RSS
(:func:`rss_kib`), the machine description (:func:`machine`) and the
``--json`` convention every module follows (:func:`emit`).
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
for _p in (ROOT / "src", ROOT / "tests", BENCH):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from heavy_session import heavy_changes  # noqa: E402

#: where the scratch stores live unless $STUISESSION_BENCH_DIR says otherwise: the
#: disk of the work tree (fsync figures mean nothing on a tmpfs)
DEFAULT_WORK = BENCH / ".work"
#: the heavy session of tests/heavy_session.py gives this much wire-form JSON per unit
_HEAVY_WIRE_BYTES = 1_461_000

Stats = dict[str, float]
#: (``changes`` for update_session_state, ``append_history``)
Changes = tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]


# -- timing -----------------------------------------------------------------------------
def pct(xs: list[float], p: float) -> float:
    """The *p* quantile (0..1) of *xs*, nearest rank."""
    s = sorted(xs)
    return s[min(len(s) - 1, int(p * len(s)))]


def summary(xs: list[float]) -> Stats:
    """n, p50, p90, p99, mean, min, max of samples in milliseconds."""
    return {
        "n": len(xs),
        "p50": pct(xs, 0.5),
        "p90": pct(xs, 0.9),
        "p99": pct(xs, 0.99),
        "mean": statistics.fmean(xs),
        "min": min(xs),
        "max": max(xs),
    }


def measure(
    fn: Callable[[], Any],
    n: int,
    *,
    budget: float | None = None,
    min_n: int = 5,
    warmup: int = 1,
) -> list[float]:
    """Latencies (ms) of up to *n* calls of *fn*; stops after *budget* seconds (>= *min_n*).

    The garbage collector is collected before and disabled during each call
    so a collection of earlier garbage does not land in one sample.
    """
    for _ in range(warmup):
        fn()
    out: list[float] = []
    start = time.perf_counter()
    gc.collect()
    for i in range(n):
        gc.disable()
        try:
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1000)
        finally:
            gc.enable()
        if i % 64 == 63:
            gc.collect()
        if budget is not None and len(out) >= min_n and time.perf_counter() - start > budget:
            break
    return out


def counter(prefix: str) -> Callable[[], str]:
    """A source of unique strings (request ids must differ: repeats hit the reply cache)."""
    it = itertools.count()
    return lambda: f"{prefix}{next(it)}"


# -- scratch space ------------------------------------------------------------------------
def work_dir() -> Path:
    """The parent of every scratch directory (on the disk under test)."""
    base = Path(os.environ.get("STUISESSION_BENCH_DIR") or DEFAULT_WORK)
    base.mkdir(parents=True, exist_ok=True)
    if base == DEFAULT_WORK:
        ignore = base / ".gitignore"
        if not ignore.exists():
            ignore.write_text("*\n")
    return base


@contextlib.contextmanager
def scratch(name: str) -> Iterator[Path]:
    """A fresh directory under :func:`work_dir`, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=f"{name}-", dir=work_dir()) as tmp:
        yield Path(tmp)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def rss_kib() -> dict[str, int]:
    """VmRSS and VmHWM (peak) of this process in KiB, from /proc/self/status."""
    out: dict[str, int] = {}
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(rest.split()[0])
    return out


# -- states -------------------------------------------------------------------------------
def scaled_changes(wire_bytes: int, seed: int = 7) -> Changes:
    """The heavy session's shape scaled so its wire form is about *wire_bytes* long."""
    f = wire_bytes / _HEAVY_WIRE_BYTES
    out: Changes = heavy_changes(
        variables=max(1, round(5000 * f)),
        objects=max(2, round(5000 * f)),
        inspectors=max(1, round(50 * f)),
        history=max(1, round(1000 * f)),
        seed=seed,
    )
    return out


def typical_changes() -> Changes:
    """A typical session: 50 variables, 200 objects, 5 inspectors, 20 history entries."""
    out: Changes = heavy_changes(variables=50, objects=200, inspectors=5, history=20)
    return out


def plain_state(wire_bytes: int, seed: int = 7) -> dict[str, Any]:
    """An untyped JSON object of about *wire_bytes* (for ``state_data`` and Django)."""
    # without inspectors and records the same counts give ~14% less JSON
    changes, history = scaled_changes(round(wire_bytes * 1.16), seed)
    return {"objects": changes["objects"], "workspace": changes["workspaces"], "history": history}


# -- peers --------------------------------------------------------------------------------
_DJANGO: dict[str, Any] = {}


def django_peers(directory: Path) -> dict[str, Any]:
    """Django's file and database (SQLite, synchronous=FULL) session backends.

    Configured once per process under *directory*; returns
    ``{"file": SessionStore class, "db": SessionStore class, "version": str}``.
    """
    if _DJANGO:
        return _DJANGO
    import django
    from django.conf import settings

    files = directory / "django-files"
    files.mkdir(parents=True, exist_ok=True)
    settings.configure(
        SECRET_KEY="bench-" + "x" * 50,
        INSTALLED_APPS=["django.contrib.sessions"],
        SESSION_ENGINE="django.contrib.sessions.backends.file",
        SESSION_FILE_PATH=str(files),
        SESSION_SERIALIZER="django.contrib.sessions.serializers.JSONSerializer",
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": str(directory / "django.sqlite3"),
                "OPTIONS": {"init_command": "PRAGMA synchronous=FULL"},
            }
        },
        USE_TZ=True,
    )
    django.setup()
    from django.contrib.sessions.backends.db import SessionStore as DbSession
    from django.contrib.sessions.backends.file import SessionStore as FileSession
    from django.core.management import call_command

    call_command("migrate", "sessions", verbosity=0)
    _DJANGO.update(file=FileSession, db=DbSession, version=django.get_version())
    return _DJANGO


# -- machine ------------------------------------------------------------------------------
def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def filesystem_of(path: Path) -> dict[str, str]:
    """Mount point, device, type and options of the file system holding *path*."""
    real = str(path.resolve())
    best = {"mount": "?", "device": "?", "type": "?", "options": ""}
    best_len = -1
    for line in _read("/proc/mounts").splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        device, mount, fstype, options = parts[:4]
        mount = mount.replace("\\040", " ")
        inside = real == mount or real.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) > best_len:
            best_len = len(mount)
            best = {"mount": mount, "device": device, "type": fstype, "options": options}
    return best


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = "?"
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = 0
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    redis_server = shutil.which("redis-server")
    redis_version = None
    if redis_server:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [redis_server, "--version"], capture_output=True, text=True, timeout=10
            ).stdout
            redis_version = next(
                (w.split("=", 1)[1] for w in out.split() if w.startswith("v=")), out.strip()
            )
    import sqlite3

    libs = {
        name: _version(name)
        for name in (
            "stuisession",
            "zstandard",
            "cryptography",
            "attrs",
            "cattrs",
            "filelock",
            "pyzmq",
            "redis",
            "Django",
            "matplotlib",
        )
    }
    try:
        import zmq

        libs["libzmq"] = zmq.zmq_version()
    except ImportError:
        pass
    libs["sqlite"] = sqlite3.sqlite_version
    libs["redis-server"] = redis_version
    bench_dir = work_dir()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "python_impl": platform.python_implementation(),
        "bench_dir": str(bench_dir),
        "filesystem": filesystem_of(bench_dir),
        "libraries": libs,
    }


def git_describe() -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + (" + uncommitted changes in src/" if dirty else "")


# -- output -------------------------------------------------------------------------------
def emit(result: dict[str, Any], json_path: str | None) -> None:
    """Write *result* to *json_path* (the runner's convention) if given."""
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")


def print_rows(rows: list[tuple[str, Stats, str]]) -> None:
    """A plain table of label, p50, p99 and a note."""
    print(f"{'operation':58} {'p50 ms':>9} {'p99 ms':>9} {'n':>5}  note")
    for label, s, note in rows:
        print(f"{label:58} {s['p50']:9.3f} {s['p99']:9.3f} {int(s['n']):5d}  {note}")

"""Memory of session management in a server process with 10,000 stored sessions.

Run:  python benchmarks/bench_memory.py [--sessions 10000] [--update-budget 12] [--json OUT]

A store of *sessions* typical sessions (50 variables, 200 objects, 5
inspectors, 20 history entries; populated with fsync off, by two processes)
is opened by a fresh process, which reports its RSS (``VmRSS`` from
/proc/self/status):

1. after importing everything a bridge imports (the baseline);
2. after opening the FileStore and a ProtocolHandler;
3. after serving a sample of requests (restore and get_session_info of 500
   sessions, a one-variable update of 100 of them, 5 list_client_sessions, 5
   create_session, one get_session_statistics): step 3 minus step 1 is what
   session management adds;
4. while it restores *every* session and then updates as many as the time
   budget allows (all of them with ``--update-budget 0``), sampling RSS and
   the cache's own estimate every 500 requests: a bounded decoded-session
   cache keeps the curve flat.

When FileStore has a ``cache_bytes`` keyword, steps 1-3 also run in a
process with the cache off (``cache_bytes=0``): that figure is session
management alone; the default-cache process shows what the cache adds and
that it stays bounded. The measuring processes open the store with fsync off
(RSS does not depend on it, the run time does). No figure is asserted.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import benchlib

from stuisession import FileStore, Policy, ProtocolHandler
from stuisession.security.identity import Caller
from stuisession.state import lifecycle

SAMPLE = 500  # sessions restored and described
SAMPLE_UPDATES = 100  # of them also updated
SAMPLE_SCANS = 5  # list_client_sessions and create_session calls
MB = 1_000_000
CLIENTS_PER_SESSION = 4  # sessions per client id (the default limit is 5)


# -- populating ---------------------------------------------------------------------------
def _populate_part(args: tuple[str, bytes, int, int, int]) -> list[str]:
    """Create sessions [lo, hi) with the given stored state (a process of its own)."""
    path, state_json, lo, hi, total = args
    store = FileStore(path, fsync=False)
    template = store.load(json.loads(Path(path, "template.json").read_text())["sid"]).state
    ids = []
    now = time.time()
    clients = max(1, total // CLIENTS_PER_SESSION)
    for i in range(lo, hi):
        s = lifecycle.new_session(f"client-{i % clients}", now=now, timeout=86_400, state=template)
        # the state is sealed from its stored JSON: create() would re-encode the same
        # bytes 10,000 times (what is measured is the reader, not the populating)
        store._put(s.info, store.codec.encode_state_json(s.info, state_json), None)
        ids.append(s.session_id)
    store.close()
    return ids


def populate(path: Path, sessions: int) -> tuple[list[str], dict[str, Any]]:
    from bench_core import Client

    store = FileStore(path, fsync=False)
    handler = ProtocolHandler(store, Policy(rate_limit=None))
    c = Client(handler, "pop-")
    sid = c.create("template-owner")
    changes, history = benchlib.typical_changes()
    c.call("update_session_state", session_id=sid, changes=changes, append_history=history)
    snap = store.load_snapshot(sid)
    state_json = snap.state_json()
    (path / "template.json").write_text(json.dumps({"sid": sid}))
    store.close()
    t0 = time.monotonic()
    parts = 2
    bounds = [(sessions * k // parts, sessions * (k + 1) // parts) for k in range(parts)]
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(parts) as pool:
        chunks = pool.map(
            _populate_part, [(str(path), state_json, lo, hi, sessions) for lo, hi in bounds]
        )
    ids = [sid for chunk in chunks for sid in chunk]
    info = {
        "sessions": len(ids) + 1,
        "state_json_bytes": len(state_json),
        "snapshot_bytes": len(snap.blob),
        "populate_s": time.monotonic() - t0,
    }
    return ids, info


# -- the measuring process ----------------------------------------------------------------
def _open_store(store_path: str, cache_bytes: int | None) -> FileStore:
    kwargs: dict[str, Any] = {"fsync": False}
    if cache_bytes is not None:
        kwargs["cache_bytes"] = cache_bytes
    return FileStore(store_path, **kwargs)


def _cache_used(store: FileStore) -> int | None:
    """The cache's own estimate of the bytes it holds (a property or a method), if any."""
    used = getattr(store, "cache_size", None)
    if callable(used):
        used = used()
    return int(used) if isinstance(used, (int, float)) else None


def child(
    store_path: str, ids_path: str, update_budget: float, cache_bytes: int | None, full: bool
) -> dict[str, Any]:
    """Measure in this (fresh) process; *full* adds the all-sessions phase."""
    import zmq  # noqa: F401 - a bridge process has it loaded

    import stuisession.bridge.server  # noqa: F401

    ids: list[str] = json.loads(Path(ids_path).read_text())
    gc.collect()
    rss: dict[str, Any] = {"baseline": benchlib.rss_kib()}
    store = _open_store(store_path, cache_bytes)
    handler = ProtocolHandler(store, Policy(rate_limit=None))
    gc.collect()
    rss["opened"] = benchlib.rss_kib()
    next_id = benchlib.counter("m")

    def call(command: str, **params: Any) -> bool:
        req = {"id": next_id(), "command": command, "parameters": params}
        # the benchmark is the embedding application: a trusted caller (lists without tokens)
        reply = handler.handle_wire(json.dumps(req).encode(), caller=Caller.local())
        return b'"status":"success"' in reply[:120] or json.loads(reply).get("status") == "success"

    rnd = random.Random(1)
    sample = rnd.sample(ids, min(SAMPLE, len(ids)))
    failures = 0
    t0 = time.monotonic()
    clients = max(1, len(ids) // CLIENTS_PER_SESSION)
    counts = {"restore": 0, "info": 0, "update": 0, "list": 0, "create": 0, "statistics": 1}
    for k, sid in enumerate(sample):
        failures += not call("restore_session", session_id=sid)
        failures += not call("get_session_info", session_id=sid)
        counts["restore"] += 1
        counts["info"] += 1
        if k < SAMPLE_UPDATES:
            failures += not call(
                "update_session_state",
                session_id=sid,
                changes={"workspaces": {"default": {"variables": {"var3": k}}}},
            )
            counts["update"] += 1
        if k < SAMPLE_SCANS:
            # without a client index these read the record of every stored session
            failures += not call("list_client_sessions", client_id=f"client-{k % clients}")
            failures += not call("create_session", client_id=f"new-client-{k}")
            counts["list"] += 1
            counts["create"] += 1
    failures += not call("get_session_statistics")
    sample_s = time.monotonic() - t0
    gc.collect()
    rss["sample"] = benchlib.rss_kib()
    result: dict[str, Any] = {
        "cache_bytes": cache_bytes,
        "sample_s": sample_s,
        "sample_requests": counts,
        "cache_used_after_sample": _cache_used(store),
        "reply_cache": {
            "max_entries": getattr(handler.replies, "max_entries", None),
            "max_bytes": getattr(handler.replies, "max_bytes", None),
        },
    }
    if full:
        curve: list[dict[str, Any]] = []

        def point(phase: str, done: int) -> None:
            curve.append(
                {
                    "phase": phase,
                    "done": done,
                    "cache_used": _cache_used(store),
                    **benchlib.rss_kib(),
                }
            )

        t0 = time.monotonic()
        point("restore", 0)
        for k, sid in enumerate(ids, 1):
            failures += not call("restore_session", session_id=sid)
            if k % 500 == 0 or k == len(ids):
                point("restore", k)
        result["restore_all_s"] = time.monotonic() - t0
        result["restored"] = len(ids)
        t0 = time.monotonic()
        updated = 0
        point("update", 0)
        for k, sid in enumerate(ids, 1):
            failures += not call(
                "update_session_state",
                session_id=sid,
                changes={"workspaces": {"default": {"variables": {"var5": k}}}},
            )
            updated = k
            if k % 500 == 0 or k == len(ids):
                point("update", k)
            if update_budget and time.monotonic() - t0 > update_budget:
                point("update", k)
                break
        result["update_s"] = time.monotonic() - t0
        result["updated"] = updated
        result["curve"] = curve
        gc.collect()
        rss["end"] = benchlib.rss_kib()
    store.close()
    result["rss_kib"] = rss
    result["failures"] = failures
    return result


def _run_child(
    root: Path, ids_path: Path, update_budget: float, cache_bytes: int | None, full: bool
) -> dict[str, Any]:
    out = root / "child.json"
    subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            str(root / "store"),
            str(ids_path),
            repr(update_budget),
            "default" if cache_bytes is None else str(cache_bytes),
            "full" if full else "sample",
            str(out),
        ],
        check=True,
    )
    r: dict[str, Any] = json.loads(out.read_text())
    base = r["rss_kib"]["baseline"]["VmRSS"]
    r["added_mb"] = (r["rss_kib"]["sample"]["VmRSS"] - base) * 1024 / MB
    r["open_mb"] = (r["rss_kib"]["opened"]["VmRSS"] - base) * 1024 / MB
    if full:
        r["peak_all_mb"] = (max(p["VmRSS"] for p in r["curve"]) - base) * 1024 / MB
        r["end_mb"] = (r["rss_kib"]["end"]["VmRSS"] - base) * 1024 / MB
    return r


# -- the driver ---------------------------------------------------------------------------
def run(sessions: int, update_budget: float) -> dict[str, Any]:
    from bench_core import cache_setting

    setting = cache_setting()
    has_cache = bool(setting and "cache_bytes" in setting)
    with benchlib.scratch("memory") as root:
        print(f"populating {sessions} sessions ...", flush=True)
        ids, info = populate(root / "store", sessions)
        print(f"  {info['populate_s']:.1f} s", flush=True)
        ids_path = root / "ids.json"
        ids_path.write_text(json.dumps(ids))
        runs: dict[str, Any] = {}
        if has_cache:
            # session management alone: the same sample with the decoded-session cache off
            print("sample with the decoded-session cache off ...", flush=True)
            runs["cache_off"] = _run_child(root, ids_path, update_budget, 0, full=False)
        print("sample and all sessions with the default cache ...", flush=True)
        runs["default"] = _run_child(root, ids_path, update_budget, None, full=True)
    return {
        "store": info,
        "runs": runs,
        "cache_setting": setting,
        "update_budget_s": update_budget,
        "management_mb": runs.get("cache_off", runs["default"])["added_mb"],
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        store_path, ids_path, budget, cache, mode, out = sys.argv[2:8]
        result = child(
            store_path,
            ids_path,
            float(budget),
            None if cache == "default" else int(cache),
            mode == "full",
        )
        Path(out).write_text(json.dumps(result))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=10_000)
    ap.add_argument(
        "--update-budget",
        type=float,
        default=12.0,
        help="seconds for the update-all phase (0: update every session)",
    )
    ap.add_argument("--json", metavar="OUT", help="write the results as JSON")
    args = ap.parse_args()
    t0 = time.monotonic()
    r = run(args.sessions, args.update_budget)
    r["elapsed_s"] = time.monotonic() - t0
    print(f"decoded-session cache setting: {r['cache_setting']}")
    for name, x in r["runs"].items():
        line = (
            f"{name}: RSS baseline {x['rss_kib']['baseline']['VmRSS'] * 1024 / MB:.1f} MB; "
            f"store+handler +{x['open_mb']:.2f} MB; after the sample +{x['added_mb']:.2f} MB"
        )
        if "peak_all_mb" in x:
            line += (
                f"; peak while touching all +{x['peak_all_mb']:.1f} MB (restored "
                f"{x['restored']}, updated {x['updated']})"
            )
        print(line + f"; failures {x['failures']}")
    benchlib.emit(r, args.json)


if __name__ == "__main__":
    main()

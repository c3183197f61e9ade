"""Core latency benchmark: ProtocolHandler over MemoryStore and FileStore, beside the floors.

Run:  python benchmarks/bench_core.py [--n 300]

Prints p50/p99 of create_session, restore_session and update_session_state,
and of the physical floors measured in the same run on the same disk: a durable
new-file write (temp + fsync + rename + directory fsync) and verify+decompress
of a snapshot. Ratios are printed beside each figure. No timing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from stuisession import FileStore, MemoryStore, Policy, ProtocolHandler


def timed(fn: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def durable_new_file_floor(directory: Path, n: int) -> list[float]:
    counter = iter(range(10**9))

    def write() -> None:
        i = next(counter)
        tmp = directory / f".t{i}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, b"x" * 600)
        os.fsync(fd)
        os.close(fd)
        os.rename(tmp, directory / f"f{i}")
        dfd = os.open(directory, os.O_RDONLY)
        os.fsync(dfd)
        os.close(dfd)

    return timed(write, n)


def start_redis(root: Path) -> tuple[subprocess.Popen[bytes], str] | None:
    """A private redis-server on a free loopback port (None if redis-server is missing)."""
    exe = shutil.which("redis-server")
    if exe is None:
        print("redis-server not found: Redis rows skipped")
        return None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            exe,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(root),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.1):
                break
        except OSError:
            time.sleep(0.05)
    return proc, f"redis://127.0.0.1:{port}/0"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    args = ap.parse_args()
    n = args.n
    rows: list[tuple[str, list[float], float | None]] = []
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        root = Path(tmp)
        floor_dir = root / "floor"
        floor_dir.mkdir()
        floor = durable_new_file_floor(floor_dir, n)
        rows.append(("floor: durable new-file write", floor, None))
        stores = [("memory", MemoryStore()), ("file", FileStore(root / "store"))]
        redis = start_redis(root)
        if redis is not None:
            from stuisession.keys import Keyring
            from stuisession.stores.redis import RedisStore

            stores.append(("redis", RedisStore(redis[1], keyring=Keyring.generate())))
        for name, store in stores:
            h = ProtocolHandler(store, Policy(rate_limit=None))
            ids: list[str] = []
            counter = iter(range(10**9))

            def create() -> None:
                r = h.handle_wire(
                    json.dumps(
                        {
                            "id": "c",
                            "command": "create_session",
                            "parameters": {"client_id": f"c{next(counter)}"},
                        }
                    ).encode()
                )
                ids.append(json.loads(r)["result"]["session_id"])

            rows.append(
                (
                    f"{name}: create_session",
                    timed(create, n),
                    pct(floor, 0.5) if name == "file" else None,
                )
            )
            sid = ids[0]

            # every request needs its own id: repeats are answered from the reply cache
            def update() -> None:
                h.handle_wire(
                    json.dumps(
                        {
                            "id": f"u{next(counter)}",
                            "command": "update_session_state",
                            "parameters": {"session_id": sid, "state_data": {"k": "v" * 100}},
                        }
                    ).encode()
                )

            rows.append((f"{name}: update_session_state (small)", timed(update, n), None))
            rst = json.dumps(
                {"id": "r", "command": "restore_session", "parameters": {"session_id": sid}}
            ).encode()
            rows.append(
                (f"{name}: restore_session (small)", timed(lambda: h.handle_wire(rst), n), None)
            )
            store.close()
        if redis is not None:
            redis[0].terminate()
            redis[0].wait(10)
    print(f"{'operation':45} {'p50 ms':>9} {'p99 ms':>9} {'p50/floor':>10}")
    for label, xs, ref in rows:
        ratio = f"{pct(xs, 0.5) / ref:10.2f}" if ref else " " * 10
        print(f"{label:45} {pct(xs, 0.5):9.3f} {pct(xs, 0.99):9.3f} {ratio}")
    print(f"(n={n}, median of all samples {statistics.median(floor):.3f} ms floor)")


if __name__ == "__main__":
    main()

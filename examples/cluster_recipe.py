"""Several bridges as one service on a Redis Cluster (loopback only).

Starts a 3-primary Redis Cluster with one replica per primary (six
``redis-server`` processes on free 127.0.0.1 ports, temporary directories, no
persistence; ``tests/redis_cluster.py``), two bridges on it::

    stuisession serve --bind tcp://127.0.0.1:P1 --key-file K \\
        --store 'redis+cluster://127.0.0.1:N1,...?durability=replicas=1'
    stuisession serve --bind tcp://127.0.0.1:P2 ...   # the same store and keyring

and a short client load through ZeroMQ REQ sockets connected to *both*
bridges (a REQ socket round-robins over the endpoints it is connected to, so
consecutive requests of one session land on different bridges: any bridge
serves any session). Then it stops everything. ``make cluster-demo`` runs it;
it needs ``redis-server``, ``redis-cli`` and the ``zmq`` and ``redis`` extras.

Exit status 0 when every update was acknowledged and read back through the
other bridge.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import zmq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from redis_cluster import start_redis_cluster  # noqa: E402

CLIENTS = 4
UPDATES = 25


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def call(sock: zmq.Socket[bytes], rid: str, command: str, **parameters: Any) -> dict[str, Any]:
    sock.send(json.dumps({"id": rid, "command": command, "parameters": parameters}).encode())
    reply: dict[str, Any] = json.loads(sock.recv())
    if reply.get("status") != "success":
        raise RuntimeError(f"{command} failed: {reply}")
    result: dict[str, Any] = reply["result"]
    return result


def start_bridge(endpoint: str, store: str, key_file: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("STUISESSION_KEYRING", None)
    with log.open("ab") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stuisession", "serve", "--bind", endpoint,
             "--store", store, "--key-file", str(key_file)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT, env=env,
        )  # fmt: skip
    ctx = zmq.Context()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"bridge exited: {log.read_text(errors='replace')}")
            sock = ctx.socket(zmq.REQ)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVTIMEO, 250)
            sock.connect(endpoint)
            try:
                sock.send(b'{"id": "ready", "command": "get_session_statistics"}')
                if json.loads(sock.recv())["status"] == "success":
                    return proc
            except zmq.Again:
                pass
            finally:
                sock.close()
        raise RuntimeError(f"bridge did not answer: {log.read_text(errors='replace')}")
    finally:
        ctx.destroy(linger=0)


def client_load(endpoints: list[str]) -> dict[str, int]:
    """CLIENTS threads: create a session, UPDATES merges, read back; over both bridges."""
    ctx = zmq.Context()
    results: dict[str, int] = {}
    failures: list[str] = []

    def one(n: int) -> None:
        sock = ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, 10_000)
        for endpoint in endpoints:  # any bridge serves any session
            sock.connect(endpoint)
        try:
            sid = call(sock, f"c{n}", "create_session", client_id=f"demo-{n}")["session_id"]
            for i in range(UPDATES):
                call(sock, f"u{n}-{i}", "update_session_state", session_id=sid,
                     state_data={f"step{i}": i}, mode="merge")  # fmt: skip
            state = call(sock, f"r{n}", "restore_session", session_id=sid)["session_state"]
            results[sid] = len(state)
        except Exception as exc:
            failures.append(f"client {n}: {exc}")
        finally:
            sock.close()

    threads = [threading.Thread(target=one, args=(n,)) for n in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    ctx.destroy(linger=0)
    if failures:
        raise RuntimeError("; ".join(failures))
    return results


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="stuisession-cluster-demo-"))
    cluster = start_redis_cluster()
    bridges: list[subprocess.Popen[bytes]] = []
    try:
        store = cluster.url + "?durability=replicas=1"
        print(f"cluster: {cluster.url} (3 primaries, 3 replicas)", flush=True)
        endpoints = [f"tcp://127.0.0.1:{free_port()}" for _ in range(2)]
        for i, endpoint in enumerate(endpoints):
            bridges.append(start_bridge(endpoint, store, work / "keyring.json", work / f"b{i}.log"))
            print(f"bridge {i + 1}: {endpoint}", flush=True)
        started = time.monotonic()
        results = client_load(endpoints)
        elapsed = time.monotonic() - started
        ok = all(n == UPDATES for n in results.values()) and len(results) == CLIENTS
        print(
            f"{CLIENTS} clients x {UPDATES} updates through both bridges in {elapsed:.2f} s: "
            f"{'all acknowledged and read back' if ok else f'MISMATCH {results}'}",
            flush=True,
        )
        for i in range(len(bridges)):
            for line in (work / f"b{i}.log").read_text(errors="replace").splitlines():
                if "durability" in line:
                    print(f"bridge {i + 1} log: {line}", flush=True)
        return 0 if ok else 1
    finally:
        for proc in bridges:
            proc.terminate()
        for proc in bridges:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        cluster.close()
        for f in work.iterdir():
            f.unlink()
        work.rmdir()


if __name__ == "__main__":
    sys.exit(main())

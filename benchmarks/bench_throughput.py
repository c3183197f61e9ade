"""Throughput of the ZeroMQ bridge: many client processes doing small durable updates.

Run:  python benchmarks/bench_throughput.py [--clients 32] [--duration 10] [--json OUT]

Starts ``stuisession serve`` as a subprocess on a free 127.0.0.1 port with a
fresh file store (durable: fsync on, the default audit log on) and the rate
limit off (``STUISESSION_RATE_LIMIT=none``; the default is 100 requests/s per
client), then *clients* separate processes, each with its own REQ socket and
client id: create a session, then ``update_session_state`` with a small
``state_data`` in a loop for *duration* seconds, all in the same time window.
Every acknowledged update is a durable write.

Reports acknowledged ops/s, p50/p90/p99/max latency, errors by type, the
CPU time used by the server and by the clients, and checks that no
acknowledged update was lost (the revisions each client saw are consecutive).
No timing is asserted.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


# -- the client process (imports only pyzmq: 32 of them start on 2 cores) -----------------
def worker(endpoint: str, index: int, start_at: float, duration: float, timeout_ms: int) -> None:
    import zmq

    ctx = zmq.Context()

    def connect() -> Any:
        s = ctx.socket(zmq.REQ)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RCVTIMEO, timeout_ms)
        s.connect(endpoint)
        return s

    sock = connect()
    seq = 0

    def call(command: str, params: dict[str, Any]) -> dict[str, Any]:
        nonlocal seq, sock
        seq += 1
        sock.send(
            json.dumps({"id": f"w{index}-{seq}", "command": command, "parameters": params}).encode()
        )
        try:
            reply: dict[str, Any] = json.loads(sock.recv())
        except zmq.Again:
            sock.close()
            sock = connect()  # a REQ socket is unusable after a lost reply
            return {"status": "error", "error_type": "timeout"}
        return reply

    client_id = f"bench-client-{index}"
    sid = None
    for _ in range(20):
        r = call("create_session", {"client_id": client_id})
        if r.get("status") == "success":
            sid = r["result"]["session_id"]
            break
        time.sleep(0.2)
    if sid is None:
        print(json.dumps({"index": index, "fatal": "could not create a session"}), flush=True)
        return
    for i in range(3):  # warm-up, outside the window
        call("update_session_state", {"session_id": sid, "state_data": {"warmup": i}})
    delay = start_at - time.time()
    late = max(0.0, -delay)
    if delay > 0:
        time.sleep(delay)
    cpu0 = time.process_time()
    end = start_at + duration
    lat: list[float] = []
    errors: dict[str, int] = {}
    revisions: list[int] = []
    i = 0
    while time.time() < end:
        i += 1
        params = {
            "session_id": sid,
            "client_id": client_id,
            "state_data": {"counter": i, "cursor": [i % 80, i % 24], "note": "x" * 64},
        }
        t0 = time.perf_counter()
        r = call("update_session_state", params)
        ms = (time.perf_counter() - t0) * 1000
        if r.get("status") == "success":
            lat.append(round(ms, 4))
            revisions.append(int(r["result"]["revision"]))
        else:
            kind = str(r.get("error_code", r.get("error_type", "unknown")))
            errors[kind] = errors.get(kind, 0) + 1
    gaps = sum(1 for a, b in itertools.pairwise(revisions) if b != a + 1)
    print(
        json.dumps(
            {
                "index": index,
                "lat": lat,
                "errors": errors,
                "late_start_s": late,
                "revision_gaps": gaps,
                "cpu_s": time.process_time() - cpu0,
            }
        ),
        flush=True,
    )
    sock.close()
    ctx.term()


# -- the driver ---------------------------------------------------------------------------
def _proc_cpu_s(pid: int) -> float:
    """utime + stime of a process and of its live descendants (serve --workers), seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    total = (int(fields[11]) + int(fields[12])) / ticks
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return total + sum(_proc_cpu_s(int(c)) for c in children)


def _wait_ready(endpoint: str, deadline: float) -> None:
    import zmq

    ctx = zmq.Context()
    try:
        while time.monotonic() < deadline:
            s = ctx.socket(zmq.REQ)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.RCVTIMEO, 500)
            s.connect(endpoint)
            s.send(b'{"id": "ping", "command": "get_session_statistics"}')
            try:
                s.recv()
                return
            except zmq.Again:
                pass
            finally:
                s.close()
        raise RuntimeError("the bridge did not answer within the start timeout")
    finally:
        ctx.term()


def run(
    clients: int, duration: float, server_workers: int | None, audit: bool = True
) -> dict[str, Any]:
    import benchlib

    with benchlib.scratch("throughput") as root:
        port = benchlib.free_port()
        endpoint = f"tcp://127.0.0.1:{port}"
        cmd = [
            sys.executable,
            "-m",
            "stuisession",
            "serve",
            "--bind",
            endpoint,
            "--store",
            str(root / "store"),
            "--log-level",
            "WARNING",
        ]
        if server_workers:
            cmd += ["--workers", str(server_workers)]
        if not audit:
            cmd += ["--audit", "off"]
        env = dict(os.environ, STUISESSION_RATE_LIMIT="none")
        env["PYTHONPATH"] = os.pathsep.join(
            [str(benchlib.ROOT / "src"), env.get("PYTHONPATH", "")]
        ).rstrip(os.pathsep)
        log = (root / "server.log").open("w")
        server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_ready(endpoint, time.monotonic() + 30)
            # time for the client processes to start and create their sessions
            start_at = time.time() + 2.0 + 0.05 * clients
            procs = [
                subprocess.Popen(
                    [
                        sys.executable,
                        str(Path(__file__).resolve()),
                        "--worker",
                        endpoint,
                        str(i),
                        repr(start_at),
                        repr(duration),
                    ],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                for i in range(clients)
            ]
            wait = start_at - time.time()
            if wait > 0:
                time.sleep(wait)
            cpu0 = _proc_cpu_s(server.pid)
            time.sleep(duration)
            cpu1 = _proc_cpu_s(server.pid)
            results = []
            for p in procs:
                out, _ = p.communicate(timeout=duration + 120)
                results.append(json.loads(out.strip().splitlines()[-1]))
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(10)
            log.close()
        server_log = (root / "server.log").read_text(errors="replace")[-2000:]
    lat = [x for r in results for x in r.get("lat", [])]
    errors: dict[str, int] = {}
    for r in results:
        if "fatal" in r:
            errors["fatal"] = errors.get("fatal", 0) + 1
        for k, v in r.get("errors", {}).items():
            errors[k] = errors.get(k, 0) + v
    stats = benchlib.summary(lat) if lat else None
    return {
        "clients": clients,
        "duration_s": duration,
        "server_workers": server_workers or f"default ({os.cpu_count()} cores)",
        "audit": audit,
        "acked_ops": len(lat),
        "ops_per_s": len(lat) / duration,
        "latency": stats,
        "errors": errors,
        "error_count": sum(errors.values()),
        "revision_gaps": sum(r.get("revision_gaps", 0) for r in results),
        "late_clients": sum(1 for r in results if r.get("late_start_s", 0) > 0),
        "server_cpu_s": cpu1 - cpu0,
        "clients_cpu_s": sum(r.get("cpu_s", 0.0) for r in results),
        "server_returncode": server.returncode,
        "server_log_tail": server_log if server.returncode not in (0, -signal.SIGTERM) else "",
        "setup": f"stuisession serve (file store, fsync on, audit log {'on' if audit else 'off'}, "
        "log level WARNING, "
        "STUISESSION_RATE_LIMIT=none); each client process: one REQ socket, one session, "
        "update_session_state with a ~100-byte state_data (mode replace)",
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        endpoint, index, start_at, duration = sys.argv[2:6]
        worker(endpoint, int(index), float(start_at), float(duration), 10_000)
        return
    sys.path.insert(0, str(HERE))
    import benchlib

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=32, help="client processes")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of load")
    ap.add_argument("--server-workers", type=int, help="serve --workers (default: its own)")
    ap.add_argument("--no-audit", action="store_true", help="serve --audit off")
    ap.add_argument("--json", metavar="OUT", help="write the results as JSON")
    args = ap.parse_args()
    t0 = time.monotonic()
    result = run(args.clients, args.duration, args.server_workers, audit=not args.no_audit)
    result["elapsed_s"] = time.monotonic() - t0
    s = result["latency"]
    print(
        f"{result['clients']} client processes, {result['duration_s']:.0f} s: "
        f"{result['ops_per_s']:.0f} acknowledged durable ops/s ({result['acked_ops']} ops); "
        f"errors {result['errors'] or 0}; lost updates (revision gaps) {result['revision_gaps']}"
    )
    if s:
        print(
            f"latency ms: p50 {s['p50']:.2f}, p90 {s['p90']:.2f}, p99 {s['p99']:.2f}, "
            f"max {s['max']:.2f}"
        )
    print(
        f"CPU: server {result['server_cpu_s']:.1f} s, clients {result['clients_cpu_s']:.1f} s "
        f"over {result['duration_s']:.0f} s on {os.cpu_count()} cores"
    )
    benchlib.emit(result, args.json)


if __name__ == "__main__":
    main()

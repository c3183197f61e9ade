"""Helpers of the adversarial suite (not a test module).

:class:`Serve` runs one real ``stuisession serve`` process on a free loopback
port with a TOML policy; :class:`ProcMeter` reads its memory and CPU from
``/proc``; :class:`Benign` is a well-behaved client measuring its latency
while an attack runs; :func:`run_attack` ties them together into one row of
the results table. Every wait has a deadline; every process is killed in a
``finally``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import zmq

from ports import free_port

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 60.0
MB = 1024 * 1024
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")

#: the policy every attacked bridge runs with (small bounds, so they are reached quickly)
POLICY: dict[str, Any] = {
    "max_message_size": 10 * 1000 * 1000,
    "max_state_bytes": 8 * MB,
    "max_reply_bytes": 12 * MB,
    "max_queued_bytes_per_connection": 16 * MB,
    "max_queued_bytes": 64 * MB,
    "max_sessions_per_client": 1000,
}
#: file-store decoded-session cache and strict-mode reply cache bounds (defaults)
CACHE_BOUNDS = 64 * MB + 64 * MB


def request(rid: str, command: str, **parameters: Any) -> bytes:
    return json.dumps({"id": rid, "command": command, "parameters": parameters}).encode()


def dir_bytes(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def tree_digest(path: Path) -> dict[str, str]:
    """name -> sha256 (or the symlink target) of everything under *path*."""
    found: dict[str, str] = {}
    for dirpath, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, path)
            if os.path.islink(full):
                found[rel] = "link:" + os.readlink(full)
            elif os.path.isfile(full):
                found[rel] = hashlib.sha256(Path(full).read_bytes()).hexdigest()
            else:
                found[rel] = "dir"
    return found


class ProcMeter:
    """Memory and CPU of a process **and its child processes** from ``/proc``.

    ``serve`` runs worker processes behind a supervisor (``--workers``, by default
    the number of cores, and a process for large requests): what the bridge holds
    is the sum over all of them.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._peak = 0
        self._hwm: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def pids(self) -> list[int]:
        """This process and its children (the worker processes)."""
        try:
            children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
        except OSError:
            children = []
        return [self.pid, *map(int, children)]

    @staticmethod
    def _status(pid: int, field: str) -> int:
        """A ``kB`` field of ``/proc/<pid>/status`` in bytes."""
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(field)

    def status(self, field: str) -> int:
        """A ``kB`` field of ``/proc/<pid>/status``, summed over the processes."""
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError, KeyError):
                total += self._status(pid, field)
        return total

    def rss(self) -> int:
        return self.status("VmRSS")

    def cpu(self) -> float:
        """utime + stime in seconds, summed over the processes."""
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{pid}/stat").read_text()
                fields = stat[stat.rindex(")") + 2 :].split()
                total += int(fields[11]) + int(fields[12])
        return total / TICKS

    def start_peak(self) -> None:
        """Start measuring the peak RSS from now (clear_refs, plus 20 ms sampling)."""
        for pid in self.pids():
            with contextlib.suppress(OSError):
                Path(f"/proc/{pid}/clear_refs").write_text("5")
        self._peak = self.rss()
        self._hwm = {}
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self._record()

    def _record(self) -> None:
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError, KeyError):
                rss = self._status(pid, "VmRSS")
                total += rss
                self._hwm[pid] = max(self._hwm.get(pid, 0), self._status(pid, "VmHWM"), rss)
        self._peak = max(self._peak, total)

    def peak(self) -> int:
        """Peak RSS since :meth:`start_peak`: the larger of the sampled sums and the
        sum of each process's own peak (an upper bound: peaks need not coincide)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._record()
        return max(self._peak, sum(self._hwm.values()))


class Serve:
    """One ``stuisession serve`` process; stderr goes to a file."""

    def __init__(self, workdir: Path, *extra: str, policy: dict[str, Any] | None = None) -> None:
        self.workdir = workdir
        self.store = workdir / "store"
        self.log = workdir / "serve.log"
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.config = workdir / "policy.toml"
        lines = ["[policy]"]
        for key, value in (policy or POLICY).items():
            lines.append(f"{key} = {json.dumps(value)}")
        self.config.write_text("\n".join(lines) + "\n")
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid = 0
        self.ctx = zmq.Context()

    @classmethod
    def attach(cls, endpoint: str, pid: int) -> Serve:
        """A handle on a bridge another process started (for attack processes)."""
        serve = cls.__new__(cls)
        serve.endpoint = endpoint
        serve.pid = pid
        serve.proc = None
        serve.ctx = zmq.Context()
        return serve

    def start(self) -> Serve:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("STUISESSION_KEYRING", None)
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "stuisession", "serve"),
                    *("--bind", self.endpoint, "--store", str(self.store)),
                    *("--config", str(self.config)),
                    *("--log-level", os.environ.get("STUISESSION_ADVERSARIAL_LOG", "WARNING")),
                    *self.extra,
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=ROOT,
                env=env,
            )
        self.pid = self.proc.pid
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited: {self.log.read_text()}")
            sock = self.socket(zmq.REQ, timeout_ms=250)
            try:
                sock.send(request("ready", "get_session_statistics"))
                if json.loads(sock.recv())["status"] == "success":
                    return self
            except zmq.Again:
                pass
            finally:
                sock.close()
        raise RuntimeError(f"serve did not answer: {self.log.read_text()}")

    @property
    def meter(self) -> ProcMeter:
        return ProcMeter(self.pid)

    def socket(
        self, kind: int = zmq.DEALER, *, timeout_ms: int = 30_000, identity: bytes | None = None
    ) -> zmq.Socket[bytes]:
        sock: zmq.Socket[bytes] = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, timeout_ms)
        sock.setsockopt(zmq.SNDTIMEO, timeout_ms)
        if identity is not None:
            sock.setsockopt(zmq.ROUTING_ID, identity)
        sock.connect(self.endpoint)
        return sock

    def call(self, sock: zmq.Socket[bytes], rid: str, command: str, **params: Any) -> Any:
        """Send one request and return its reply, skipping stale replies (DEALER)."""
        sock.send(request(rid, command, **params))
        while True:
            reply = json.loads(sock.recv())
            if reply.get("id") == rid:
                return reply

    def statistics(self) -> dict[str, Any]:
        sock = self.socket(zmq.DEALER)
        try:
            reply = self.call(sock, "stats", "get_session_statistics")
            result: dict[str, Any] = reply["result"]
            return result
        finally:
            sock.close()

    def wait_idle(self, timeout: float = 120.0) -> None:
        """Until no attack request is pending in the bridge.

        The statistics request itself and the benign client's one request may be.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stats = self.statistics()
            if stats.get("pending_requests", 0) <= 2:
                return
            time.sleep(0.05)
        raise AssertionError("the bridge stayed busy")

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self.ctx.destroy(linger=0)


class Benign:
    """A well-behaved client restoring a small session in a loop, timing each call."""

    def __init__(self, serve: Serve, pause: float = 0.01) -> None:
        self.serve = serve
        self.pause = pause
        sock = serve.socket(zmq.DEALER)
        created = serve.call(sock, "c", "create_session", client_id="benign")
        self.session_id = created["result"]["session_id"]
        self.token = created["result"].get("resume_token")
        sock.close()
        self.latencies: list[float] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.latencies = []
        self.errors = 0
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        sock = self.serve.socket(zmq.DEALER, timeout_ms=60_000)
        try:
            i = 0
            while not self._stop.is_set():
                i += 1
                started = time.perf_counter()
                params: dict[str, Any] = {"session_id": self.session_id}
                if self.token is not None:  # strict mode; a restore may rotate both
                    params["resume_token"] = self.token
                try:
                    reply = self.serve.call(sock, f"b{i}", "restore_session", **params)
                except zmq.Again:
                    self.errors += 1
                    continue
                self.latencies.append(time.perf_counter() - started)
                if reply.get("status") != "success":
                    self.errors += 1
                else:
                    self.session_id = reply["result"].get("session_id", self.session_id)
                    self.token = reply["result"].get("resume_token", self.token)
                self._stop.wait(self.pause)
        finally:
            sock.close()

    def stop(self) -> dict[str, float]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(90)
        return percentiles(self.latencies)


def percentiles(samples: list[float]) -> dict[str, float]:
    if len(samples) < 2:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "n": len(samples)}
    qs = statistics.quantiles(samples, n=100, method="inclusive")
    return {"p50_ms": qs[49] * 1000, "p99_ms": qs[98] * 1000, "n": len(samples)}


Attack = Callable[[Serve], int]


def _attack_process(attack: str, endpoint: str, pid: int, out: Any) -> None:
    from adversarial import attacks

    serve = Serve.attach(endpoint, pid)
    try:
        out.put(getattr(attacks, attack)(serve))
    except BaseException as exc:
        out.put(repr(exc))
        raise
    finally:
        serve.ctx.destroy(linger=0)


def in_process(attack: str) -> Attack:
    """Run the attack function *attack* (a name in ``attacks``) in a process of its own.

    The attacker then never competes with the benign client for this process's
    GIL, which would measure the test, not the bridge.
    """

    def run(serve: Serve) -> int:
        ctx = multiprocessing.get_context("spawn")
        out = ctx.Queue()
        proc = ctx.Process(target=_attack_process, args=(attack, serve.endpoint, serve.pid, out))
        proc.start()
        try:
            result = out.get(timeout=600)
        finally:
            proc.join(60)
            if proc.is_alive():
                proc.kill()
        if not isinstance(result, int):
            raise AssertionError(f"attack {attack} failed: {result}")
        return result

    return run


def run_attack(name: str, serve: Serve, benign: Benign, attack: Attack) -> dict[str, Any]:
    """Run *attack* (returns its request count) with the benign client alongside."""
    meter = serve.meter
    serve.wait_idle()
    audit = serve.store / "audit.log"
    audit_before = audit.stat().st_size if audit.exists() else 0
    store_before = dir_bytes(serve.store)
    rss_before = meter.rss()
    cpu_before = meter.cpu()
    meter.start_peak()
    benign.start()
    started = time.monotonic()
    count = attack(serve)
    serve.wait_idle()
    elapsed = time.monotonic() - started
    latency = benign.stop()
    samples = list(benign.latencies)
    cpu = meter.cpu() - cpu_before
    peak = meter.peak()
    audit_after = audit.stat().st_size if audit.exists() else 0
    return {
        "attack": name,
        "requests": count,
        "seconds": round(elapsed, 2),
        "rss_before_mb": round(rss_before / MB, 1),
        "peak_rss_mb": round(peak / MB, 1),
        "rss_growth_mb": round((peak - rss_before) / MB, 1),
        "cpu_ms_per_request": round(cpu / max(count, 1) * 1000, 3),
        "disk_written_bytes": dir_bytes(serve.store) - store_before,
        "audit_bytes": audit_after - audit_before,
        "benign_p50_ms": round(latency["p50_ms"], 2),
        "benign_p99_ms": round(latency["p99_ms"], 2),
        "benign_requests": latency["n"],
        "benign_errors": benign.errors,
        # the raw latencies (seconds), for pooled percentiles; not written to the report
        "_samples": samples,
    }


@contextlib.contextmanager
def serving(workdir: Path, *extra: str, policy: dict[str, Any] | None = None) -> Iterator[Serve]:
    workdir.mkdir(parents=True, exist_ok=True)
    serve = Serve(workdir, *extra, policy=policy)
    try:
        yield serve.start()
    finally:
        serve.close()


def table(rows: list[dict[str, Any]]) -> str:
    cols = [
        "attack",
        "requests",
        "peak_rss_mb",
        "rss_growth_mb",
        "cpu_ms_per_request",
        "disk_written_bytes",
        "audit_bytes",
        "benign_p50_ms",
        "benign_p99_ms",
    ]
    lines = [" | ".join(cols)]
    for row in rows:
        lines.append(" | ".join(str(row.get(c, "")) for c in cols))
    return "\n".join(lines)


def latency_rounds(
    serve: Serve, benign: Benign, attack: str, rounds: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """*rounds* of (benign alone, benign under *attack*), alternating on one bridge.

    Returns the rows and a summary. The verdict is **pooled**: the p50 and p99 of
    all attacked samples over those of all unloaded samples (a p99 of one round's
    few hundred samples is its third or fourth largest, too noisy to compare one
    round with another). Alternating keeps the comparison fair on a machine whose
    load drifts: a burst of load from other processes hits both kinds of round.
    Per round ratios are reported too.
    """
    rows: list[dict[str, Any]] = []
    p50s: list[float] = []
    p99s: list[float] = []
    calm: list[float] = []
    hit_samples: list[float] = []
    for i in range(rounds):
        base = run_attack(f"unloaded (round {i + 1})", serve, benign, in_process("idle"))
        hit = run_attack(f"{attack} (round {i + 1})", serve, benign, in_process(attack))
        calm += base.pop("_samples")
        hit_samples += hit.pop("_samples")
        rows += [base, hit]
        p50s.append(hit["benign_p50_ms"] / base["benign_p50_ms"])
        p99s.append(hit["benign_p99_ms"] / base["benign_p99_ms"])
    unloaded, attacked = percentiles(calm), percentiles(hit_samples)
    summary = {
        "rounds": rounds,
        "unloaded_samples": unloaded["n"],
        "attacked_samples": attacked["n"],
        "unloaded_p50_ms": round(unloaded["p50_ms"], 2),
        "unloaded_p99_ms": round(unloaded["p99_ms"], 2),
        "attacked_p50_ms": round(attacked["p50_ms"], 2),
        "attacked_p99_ms": round(attacked["p99_ms"], 2),
        "p50_ratio": round(attacked["p50_ms"] / unloaded["p50_ms"], 2),
        "p99_ratio": round(attacked["p99_ms"] / unloaded["p99_ms"], 2),
        "round_p50_ratios": [round(r, 2) for r in p50s],
        "round_p99_ratios": [round(r, 2) for r in p99s],
        "median_round_p99_ratio": round(statistics.median(p99s), 2),
    }
    return rows, summary

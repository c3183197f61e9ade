"""A hermetic Redis Cluster for tests, benchmarks and the cluster recipe (not a test module).

``RedisCluster`` starts six ``redis-server`` processes with ``--cluster-enabled
yes`` on free 127.0.0.1 ports, each in its own temporary directory with no
persistence (``--appendonly no --save ""``), joins them with ``redis-cli
--cluster create ... --cluster-replicas 1 --cluster-yes`` (three primaries,
one replica each) and waits until every node reports ``cluster_state:ok``.
``cluster-node-timeout`` is short (1 s by default) so that a killed primary is
replaced by its replica within a few seconds. ``close()`` kills everything.

Run as a script it starts a cluster, prints its nodes as a
``redis+cluster://`` URL and waits for SIGTERM/SIGINT (see
``examples/cluster_recipe.sh``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ports import free_port
from redis_server import HOST, RedisServerMissing, find_redis_server, ping


def find_redis_cli() -> str:
    """The redis-cli executable (next to redis-server, or on PATH)."""
    server = find_redis_server()
    sibling = os.path.join(os.path.dirname(server), "redis-cli")
    if os.access(sibling, os.X_OK):
        return sibling
    found = shutil.which("redis-cli")
    if found:
        return found
    raise RedisServerMissing(
        "redis-cli is not installed (the Redis Cluster tests need it to create the cluster)"
    )


def free_ports(n: int) -> list[int]:
    """*n* distinct free ports on 127.0.0.1 whose cluster bus port (+10000) is free too."""
    return [free_port(bus_offset=10000) for _ in range(n)]


def _command(port: int, *args: str, timeout: float = 2.0) -> Any:
    """One command to one node (redis-py, no cluster logic); None when it does not answer."""
    import redis

    try:
        with redis.Redis(
            host=HOST, port=port, socket_timeout=timeout, socket_connect_timeout=timeout
        ) as r:
            return r.execute_command(*args)
    except redis.RedisError:
        return None


class RedisClusterServers:
    """Six cluster-enabled redis-servers on loopback: 3 primaries with 1 replica each.

    :param extra_args: more ``redis-server`` options for every node.
    :param node_timeout: ``cluster-node-timeout`` in milliseconds.
    """

    def __init__(
        self,
        *,
        masters: int = 3,
        replicas: int = 1,
        extra_args: Sequence[str] = (),
        node_timeout: int = 1000,
        start_timeout: float = 30.0,
    ) -> None:
        self.executable = find_redis_server()
        self.cli = find_redis_cli()
        self.count = masters * (1 + replicas)
        self.replicas = replicas
        self.extra_args = list(extra_args)
        self.node_timeout = node_timeout
        self.start_timeout = start_timeout
        self._tmp = tempfile.TemporaryDirectory(prefix="stuisession-cluster-")
        self.dir = Path(self._tmp.name)
        self.ports: list[int] = []
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    # -- addresses ------------------------------------------------------------------
    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:p1,127.0.0.1:p2,...`` (every node)."""
        return "redis+cluster://" + ",".join(f"{HOST}:{p}" for p in self.ports)

    @property
    def nodes(self) -> list[tuple[str, int]]:
        return [(HOST, p) for p in self.ports]

    # -- life cycle -----------------------------------------------------------------
    def start(self) -> RedisClusterServers:
        self.ports = free_ports(self.count)
        for port in self.ports:
            self._start_node(port)
        deadline = time.monotonic() + self.start_timeout
        for port in self.ports:
            while not ping(port):
                if time.monotonic() > deadline or self.procs[port].poll() is not None:
                    self.close()
                    raise RuntimeError(f"cluster node on port {port} did not start")
                time.sleep(0.02)
        create = subprocess.run(
            [
                self.cli,
                "--cluster",
                "create",
                *[f"{HOST}:{p}" for p in self.ports],
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=self.start_timeout,
            check=False,
        )
        if create.returncode != 0:
            out = (create.stdout + create.stderr).decode(errors="replace")[-800:]
            self.close()
            raise RuntimeError(f"redis-cli --cluster create failed: {out}")
        try:
            self.wait_ok(self.start_timeout)
        except RuntimeError:
            self.close()
            raise
        return self

    def _start_node(self, port: int) -> None:
        node_dir = self.dir / str(port)
        node_dir.mkdir(exist_ok=True)
        args = [
            self.executable,
            "--port", str(port),
            "--bind", HOST,
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(node_dir / "nodes.conf"),
            "--cluster-node-timeout", str(self.node_timeout),
            "--appendonly", "no",
            "--save", "",
            "--dir", str(node_dir),
            "--logfile", str(node_dir / "redis.log"),
            "--daemonize", "no",
            "--protected-mode", "yes",
            *self.extra_args,
        ]  # fmt: skip
        self.procs[port] = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def alive(self) -> list[int]:
        return [p for p in self.ports if self.procs[p].poll() is None]

    def info(self, port: int) -> dict[str, str]:
        """``CLUSTER INFO`` of one node as a dict (empty when it does not answer)."""
        reply = _command(port, "CLUSTER", "INFO")
        if not isinstance(reply, dict):
            text = reply.decode() if isinstance(reply, bytes) else ""
            reply = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        return {str(k): str(v).strip() for k, v in reply.items()}

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every live node says ``cluster_state:ok`` with all 16384 slots served."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            infos = [self.info(p) for p in self.alive()]
            if (
                infos
                and all(
                    i.get("cluster_state") == "ok" and i.get("cluster_slots_ok") == "16384"
                    for i in infos
                )
                and self._replicas_in_sync()
            ):
                return
            time.sleep(0.05)
        raise RuntimeError(f"the Redis cluster did not reach cluster_state:ok within {timeout} s")

    def _replicas_in_sync(self) -> bool:
        """Every live replica's link to its primary is up (so WAIT can be answered)."""
        for port in self.alive():
            role = _command(port, "ROLE")
            if not role:
                return False
            if role[0] in (b"slave", "slave") and role[3] not in (b"connected", "connected"):
                return False
        return True

    def masters(self) -> list[int]:
        """Ports of the live primaries (by ``ROLE``)."""
        roles = {p: _command(p, "ROLE") for p in self.alive()}
        return [p for p, r in roles.items() if r and r[0] in (b"master", "master")]

    def master_of_slot(self, slot: int) -> int:
        """Port of the live primary serving *slot* (from ``CLUSTER SHARDS``-free parsing)."""
        for port in self.alive():
            reply = _command(port, "CLUSTER", "NODES")
            text = reply.decode() if isinstance(reply, bytes) else str(reply or "")
            for line in text.splitlines():
                parts = line.split()
                if len(parts) < 9 or "master" not in parts[2] or "fail" in parts[2]:
                    continue
                for rng in parts[8:]:
                    lo, _, hi = rng.partition("-")
                    if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                        return int(parts[1].split("@")[0].rsplit(":", 1)[1])
            if text:
                break
        raise RuntimeError(f"no primary serves slot {slot}")

    def kill(self, port: int) -> None:
        """SIGKILL one node (a crash: no shutdown, nothing saved)."""
        proc = self.procs[port]
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)

    def restart(self, port: int, timeout: float = 30.0) -> None:
        """Start a killed node again (same port and directory); it rejoins the cluster.

        A primary that was replaced comes back as a replica of its successor.
        """
        if self.procs[port].poll() is None:
            return
        self._start_node(port)
        deadline = time.monotonic() + timeout
        while not ping(port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster node {port} did not restart")
            time.sleep(0.02)
        self.wait_ok(max(1.0, deadline - time.monotonic()))

    def wait_failover(self, killed: int, timeout: float = 30.0) -> int:
        """After *killed* died: wait until a replica took over; the new primary's port."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(RuntimeError):
                self.wait_ok(timeout=0.2)
                if len(self.masters()) == self.count // (1 + self.replicas):
                    return next(p for p in self.masters() if p != killed)
            time.sleep(0.05)
        raise RuntimeError(f"no replica took over from {killed} within {timeout} s")

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        self.procs.clear()
        self._tmp.cleanup()

    def __enter__(self) -> RedisClusterServers:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_redis_cluster(
    *, extra_args: Sequence[str] = (), attempts: int = 3, node_timeout: int = 1000
) -> RedisClusterServers:
    """Start a cluster, trying other ports if one was taken meanwhile."""
    last: Exception | None = None
    for _ in range(attempts):
        cluster = RedisClusterServers(extra_args=extra_args, node_timeout=node_timeout)
        try:
            return cluster.start()
        except RuntimeError as exc:
            last = exc
    raise RuntimeError(f"could not start a Redis cluster: {last}")


def main() -> int:
    """Start a cluster, print its URL on stdout, run until SIGTERM/SIGINT."""
    cluster = start_redis_cluster()
    stop = False

    def handle(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    try:
        print(cluster.url, flush=True)
        while not stop:
            time.sleep(0.1)
    finally:
        cluster.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())


# -- loads shared by the tests and the loss measurements ----------------------------------
def update_load(
    handlers: Sequence[Any],
    session_ids: Sequence[str],
    *,
    seconds: float,
    during: Any = None,
    threads_per_session: int = 1,
    acks_before: int = 0,
    acks: int = 0,
    hang_guard: float = 120.0,
) -> dict[str, Any]:
    """Writers merging ``{"w<t>": i}`` (i = 0, 1, 2 ...) into sessions through *handlers*.

    Each writer sends its requests round-robin over the handlers (several
    bridges as one service), resends a request that failed with a retryable
    error (same id) a few times, then moves on. *during*, if given, is called
    once from the main thread after a third of *seconds* (e.g. to kill a node).
    The phases end on counts, not only on time, so a slow machine changes how long
    the load runs, not what it proves: *during* waits for *acks_before*
    acknowledged updates, and the load stops only once *acks* were acknowledged in
    all (each wait fails after *hang_guard* seconds). Returns the acknowledged values per (session, writer key), and the error
    types seen (with counts).
    """
    import threading

    acked: dict[tuple[str, str], list[int]] = {}
    errors: dict[str, int] = {}
    lock = threading.Condition()
    stop = threading.Event()
    count = [0]

    def writer(t: int, sid: str) -> None:
        key = f"w{t}"
        i = 0
        while not stop.is_set():
            request = {
                "id": f"{key}-{i}",
                "command": "update_session_state",
                "parameters": {"session_id": sid, "state_data": {key: i}, "mode": "merge"},
            }
            for attempt in range(20):
                reply = handlers[(i + attempt) % len(handlers)].handle(request)
                if reply["status"] == "success":
                    with lock:
                        acked.setdefault((sid, key), []).append(i)
                        count[0] += 1
                        lock.notify_all()
                    break
                kind = reply.get("error_code") or reply.get("error_type", "?")
                reason = (reply.get("details") or {}).get("reason", "")
                with lock:
                    name = f"{kind}:{reason}" if reason == "durability_unknown" else kind
                    errors[name] = errors.get(name, 0) + 1
                if stop.is_set() or reason == "durability_unknown":
                    break
                time.sleep(0.05)
            i += 1

    workers = [
        threading.Thread(target=writer, args=(n * threads_per_session + k, sid), daemon=True)
        for n, sid in enumerate(session_ids)
        for k in range(threads_per_session)
    ]

    def wait_acks(n: int, phase: str) -> None:
        with lock:
            if not lock.wait_for(lambda: count[0] >= n, hang_guard):
                stop.set()
                raise AssertionError(f"only {count[0]} of {n} updates acknowledged {phase}")

    for w in workers:
        w.start()
    time.sleep(seconds / 3)
    wait_acks(acks_before, "before the fault")
    if during is not None:
        during()
    time.sleep(seconds * 2 / 3)
    wait_acks(acks, "in all")
    stop.set()
    for w in workers:
        w.join(timeout=30)
    return {"acked": acked, "errors": errors}


def count_lost(store: Any, acked: dict[tuple[str, str], list[int]]) -> tuple[int, int]:
    """(acknowledged updates lost, acknowledged updates) after a crash.

    A writer's updates are sequential, so the stored value ``v`` of its key
    holds every update up to ``v``: each acknowledged value above ``v`` was lost.
    """
    lost = total = 0
    for (sid, key), values in acked.items():
        try:
            value = store.load(sid).state.session_state.get(key, -1)
        except Exception:
            value = -1
        total += len(values)
        lost += sum(1 for v in values if v > value)
    return lost, total

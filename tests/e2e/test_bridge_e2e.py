"""The bridge as real processes under failure.

(a) Twenty client processes (``SessionClient``) update their sessions while the
bridge is SIGKILLed and restarted twice; afterwards every acknowledged update
is in the store. (b) Two bridges share one hermetic Redis: a session created
through one is restored through the other after the first is SIGKILLed, and
concurrent updates through both lose nothing.

Only 127.0.0.1 is used. Every process is killed in a ``finally`` or fixture
finaliser whatever happens; every wait has a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from ports import free_port
from stuisession.client import SessionClient

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
#: how long a bridge process may take to answer its first request (a hang guard: slow CI,
#: cold imports, a backlog of resent requests after a restart)
START_TIMEOUT = 120.0

N_CLIENTS = 20
N_UPDATES = 50
#: hang guards, not latencies (a busy 2-core machine may be ten times slower than a
#: quiet one): no new acknowledgement for STALL_GUARD seconds, or a whole run longer
#: than RUN_DEADLINE, fails the test
STALL_GUARD = 120.0
RUN_DEADLINE = 600.0

#: one client process: create a session, update it N times, restore; every step to a file.
#: Before its last update a client waits for the gate file: the test opens the gate only
#: after its second kill, so both kills land while acknowledged updates are still due,
#: however fast or slow the machine is (a timing race made this flaky on a loaded CI).
CLIENT_SCRIPT = r"""
import json, os, sys, time
from stuisession.client import SessionClient

endpoint, client_id, out_path, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
gate = sys.argv[5]
with open(out_path, "a", encoding="utf-8") as out:
    def record(**fields):
        out.write(json.dumps(fields) + "\n")
        out.flush()
    try:
        # 2 s per try, 30 resends: ~60 s without an answer before a client gives up; a
        # shorter timeout makes 20 clients resend faster than a slowed bridge answers
        with SessionClient(endpoint, client_id, timeout=2.0, retries=30, backoff=0.1) as c:
            c.open()
            record(event="open", session_id=c.session_id)
            for i in range(n):
                if i == n - 1:
                    deadline = time.monotonic() + 300
                    while not os.path.exists(gate) and time.monotonic() < deadline:
                        time.sleep(0.01)
                result = c.update(state_data={"k%d" % i: i}, mode="merge")
                # acknowledged: the server answered with success
                record(event="ack", key="k%d" % i, revision=result["revision"],
                       session_id=c.session_id)
                time.sleep(0.02)
            final = c.restore()
            record(event="final", session_id=c.session_id, revision=final["revision"],
                   keys=sorted(final["session_state"]), reconnects=c.reconnects)
    except BaseException as exc:
        record(event="error", error=repr(exc))
        raise
"""


class Bridge:
    """One ``stuisession serve`` process; stderr goes to a file (a pipe could fill up)."""

    def __init__(self, store: str, log: Path, *extra: str) -> None:
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.store = store
        self.log = log
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Bridge:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("STUISESSION_KEYRING", None)
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "stuisession",
                    "serve",
                    "--bind",
                    self.endpoint,
                    "--store",
                    self.store,
                    "--log-level",
                    "WARNING",
                    *self.extra,
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=ROOT,
                env=env,
            )
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        """Poll with fresh REQ sockets until the server answers (or fail with its log)."""
        ctx = zmq.Context()
        deadline = time.monotonic() + START_TIMEOUT
        # each probe waits twice as long as the one before (250 ms up to 5 s): a bridge
        # slowed by a busy machine still answers one of them
        probe_ms = 250
        try:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    pytest.fail(f"bridge exited with {self.proc.returncode}:\n{self.stderr()}")
                sock = ctx.socket(zmq.REQ)  # a REQ socket that timed out is stuck
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.RCVTIMEO, probe_ms)
                sock.connect(self.endpoint)
                try:
                    sock.send(b'{"id": "ready", "command": "get_session_statistics"}')
                    if json.loads(sock.recv())["status"] == "success":
                        return
                except zmq.Again:
                    probe_ms = min(2 * probe_ms, 5000)
                finally:
                    sock.close()
        finally:
            ctx.destroy(linger=0)
        pytest.fail(f"bridge did not answer within {START_TIMEOUT} s:\n{self.stderr()}")

    def sigkill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(30) == -signal.SIGKILL

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def stderr(self) -> str:
        return self.log.read_text("utf-8", "replace") if self.log.exists() else ""


@pytest.fixture
def bridges(tmp_path: Path) -> Iterator[Callable[..., Bridge]]:
    """bridges(store, *extra_args) -> a started bridge; all are SIGKILLed at the end."""
    made: list[Bridge] = []

    def factory(store: str, *extra: str) -> Bridge:
        b = Bridge(store, tmp_path / f"bridge-{len(made)}.log", *extra)
        made.append(b)
        return b.start()

    yield factory
    for b in made:
        b.kill()


def read_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = path.read_text("utf-8").splitlines()
    # a line being written right now may be incomplete: only whole lines count
    return [json.loads(line) for line in lines if line.endswith("}")]


def count_acks(paths: list[Path]) -> int:
    return sum(1 for p in paths for r in read_records(p) if r["event"] == "ack")


def restore_raw(endpoint: str, session_id: str, client_id: str) -> dict[str, Any]:
    with SessionClient(endpoint, client_id, session_id=session_id, timeout=10.0) as c:
        return c.restore()


# -- (a) SIGKILL and restart under 20 writers ----------------------------------------------
def worker_pids(pid: int) -> list[int]:
    """The worker processes of the bridge *pid* (its children running a spawned worker)."""
    found = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:
            found.append(int(child))
    return found


# make test runs the one-worker bridge kill; make faults (marker `heavy`) runs all three
@pytest.mark.parametrize(
    ("workers", "victim"),
    [
        pytest.param(1, "bridge", id="workers1-kill-bridge"),
        pytest.param(2, "bridge", id="workers2-kill-bridge", marks=pytest.mark.heavy),
        pytest.param(2, "worker", id="workers2-kill-worker", marks=pytest.mark.heavy),
    ],
)
def test_twenty_clients_lose_no_acknowledged_update_across_two_sigkills(
    tmp_path: Path, bridges: Callable[..., Bridge], workers: int, victim: str
):
    store = str(tmp_path / "store")
    server = bridges(store, "--workers", str(workers))
    outs = [tmp_path / f"client-{n}.jsonl" for n in range(N_CLIENTS)]
    errs = [tmp_path / f"client-{n}.err" for n in range(N_CLIENTS)]
    procs: list[subprocess.Popen[bytes]] = []
    started = time.monotonic()
    total = N_CLIENTS * N_UPDATES
    kills_at: list[int] = []
    gate = tmp_path / "gate"
    try:
        for n in range(N_CLIENTS):
            with errs[n].open("wb") as err:
                procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-c",
                            CLIENT_SCRIPT,
                            server.endpoint,
                            f"e2e-client-{n}",
                            str(outs[n]),
                            str(N_UPDATES),
                            str(gate),
                        ],
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=err,
                        cwd=ROOT,
                    )
                )
        # SIGKILL the bridge at two points of the run and start it again (same port and store)
        last_acks, last_progress = -1, time.monotonic()
        for fraction in (0.2, 0.6):
            while (acks_now := count_acks(outs)) < fraction * total:
                if acks_now != last_acks:
                    last_acks, last_progress = acks_now, time.monotonic()
                assert time.monotonic() - last_progress < STALL_GUARD, "clients made no progress"
                assert time.monotonic() - started < RUN_DEADLINE, "the run did not end"
                dead = [p.returncode for p in procs if p.poll() not in (None, 0)]
                assert not dead, f"client processes failed: {dead}\n{errs[0].read_text()}"
                time.sleep(0.02)
            acked = count_acks(outs)
            kills_at.append(acked)
            if victim == "bridge":
                server.sigkill()
                server.start()
            else:  # one worker dies; the supervisor starts another in its place
                assert server.proc is not None
                before = worker_pids(server.proc.pid)
                assert len(before) == workers + 1, before  # and the large-request lane
                os.kill(before[len(kills_at) % workers], signal.SIGKILL)
                deadline = time.monotonic() + 30
                while len(set(worker_pids(server.proc.pid)) - set(before)) < 1:
                    assert time.monotonic() < deadline, "the dead worker was not restarted"
                    time.sleep(0.05)
        gate.touch()  # the last update of every client goes through the restarted bridge
        for n, p in enumerate(procs):
            remaining = max(1.0, RUN_DEADLINE - (time.monotonic() - started))
            assert p.wait(remaining) == 0, f"client {n} failed:\n{errs[n].read_text()}"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(30)
    # both kills happened while updates were still going on (the gate guarantees it)
    assert all(k <= total - N_CLIENTS for k in kills_at), kills_at

    lost: list[str] = []
    for n, out in enumerate(outs):
        records = read_records(out)
        acks = [r for r in records if r["event"] == "ack"]
        finals = [r for r in records if r["event"] == "final"]
        assert len(acks) == N_UPDATES, f"client {n}: {len(acks)} acknowledged updates"
        assert len(finals) == 1, records[-3:]
        sid = finals[0]["session_id"]
        assert {a["session_id"] for a in acks} == {sid}
        acked_keys = {a["key"] for a in acks}
        revisions = [a["revision"] for a in acks]
        assert revisions == sorted(revisions), f"client {n}: revisions went backwards"
        # the client's own restore, and one from here, have every acknowledged key
        assert acked_keys <= set(finals[0]["keys"]), n
        restored = restore_raw(server.endpoint, sid, f"e2e-client-{n}")
        missing = acked_keys - set(restored["session_state"])
        lost += [f"client {n}: {k}" for k in sorted(missing)]
        assert restored["revision"] >= max(revisions)
        assert restored["session_state"] == {f"k{i}": i for i in range(N_UPDATES)}
    assert lost == [], f"acknowledged updates lost: {lost}"
    # the kills were felt: clients timed out, resent and carried on
    finals = [r for out in outs for r in read_records(out) if r["event"] == "final"]
    assert sum(r["reconnects"] for r in finals) >= 1
    assert "Traceback" not in server.stderr()


# -- (b) two bridges, one Redis -------------------------------------------------------------
def test_two_bridges_share_one_redis(
    tmp_path: Path, bridges: Callable[..., Bridge], redis_server_factory: Callable[..., Any]
):
    redis = redis_server_factory()
    key_file = tmp_path / "keyring.json"
    options = ("--key-file", str(key_file))
    first = bridges(redis.url, *options)
    second = bridges(redis.url, *options)

    with SessionClient(first.endpoint, "tui-redis", timeout=5.0, retries=3) as c:
        sid = c.open()["session_id"]
        for i in range(3):
            c.update(state_data={f"k{i}": i}, mode="merge")
        c.update(workspace_context={"current_workspace": "main"})
        before = c.restore()
    assert before["revision"] == 5

    first.sigkill()
    with SessionClient(second.endpoint, "tui-redis", session_id=sid, timeout=5.0) as c2:
        after = c2.open()
    assert after["session_id"] == sid
    assert after["revision"] == before["revision"]
    assert after["session_state"] == before["session_state"] == {"k0": 0, "k1": 1, "k2": 2}
    assert after["workspace_context"] == before["workspace_context"]

    # concurrent merge updates through both bridges (the first one restarted)
    first.start()
    per_bridge = 30
    acked: dict[str, list[str]] = {"a": [], "b": []}
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def writer(endpoint: str, tag: str) -> None:
        try:
            with SessionClient(endpoint, "tui-redis", session_id=sid, timeout=5.0, retries=3) as w:
                w.open()
                barrier.wait(30)
                for i in range(per_bridge):
                    w.update(state_data={f"{tag}{i}": i}, mode="merge")
                    acked[tag].append(f"{tag}{i}")
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=writer, args=(first.endpoint, "a")),
        threading.Thread(target=writer, args=(second.endpoint, "b")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert len(acked["a"]) == len(acked["b"]) == per_bridge

    for endpoint in (first.endpoint, second.endpoint):
        final = restore_raw(endpoint, sid, "tui-redis")
        keys = set(final["session_state"])
        assert set(acked["a"]) | set(acked["b"]) | {"k0", "k1", "k2"} == keys
        assert final["revision"] == before["revision"] + 2 * per_bridge
    for b in (first, second):
        assert "Traceback" not in b.stderr()


# -- (c) the large-request lane keeps each connection's order -------------------------------
def test_pipelined_large_and_small_requests_of_one_connection_keep_their_order(
    tmp_path: Path, bridges: Callable[..., Bridge]
) -> None:
    """``serve --workers 2`` sends large requests to a process of their own (issue 17);
    a DEALER that pipelines large and small updates of one session still has them
    applied, and answered, in the order sent."""
    bridge = bridges(str(tmp_path / "store"), "--workers", "2")
    assert bridge.proc is not None
    # two workers and the lane, which runs at the lowest priority (bridge/supervisor.py)
    deadline = time.monotonic() + 60
    while len(pids := worker_pids(bridge.proc.pid)) < 3:
        assert time.monotonic() < deadline, pids
        time.sleep(0.05)
    base = os.getpriority(os.PRIO_PROCESS, bridge.proc.pid)
    assert sorted(os.getpriority(os.PRIO_PROCESS, pid) for pid in pids) == [base, base, 19]
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 60_000)
    try:
        sock.connect(bridge.endpoint)

        def send(rid: str, command: str, **parameters: Any) -> None:
            sock.send(
                json.dumps({"id": rid, "command": command, "parameters": parameters}).encode()
            )

        send("c", "create_session", client_id="pipeliner")
        created = json.loads(sock.recv())
        sid = created["result"]["session_id"]
        big = "x" * 200_000  # over the 64 KiB that makes a request large
        sent = []
        for i in range(12):
            value = f"{big}{i}" if i % 3 != 1 else f"small-{i}"
            sent.append(f"u{i}")
            send(
                f"u{i}",
                "update_session_state",
                session_id=sid,
                state_data={"last": value, f"k{i}": i},
                mode="merge",
            )
        replies = [json.loads(sock.recv()) for _ in sent]
        assert [r["id"] for r in replies] == sent  # answered in the order sent
        assert all(r["status"] == "success" for r in replies), replies
        revisions = [r["result"]["revision"] for r in replies]
        assert revisions == sorted(revisions) and len(set(revisions)) == len(revisions)
        send("r", "restore_session", session_id=sid)
        restored = json.loads(sock.recv())["result"]
        assert restored["session_state"]["last"] == f"{big}11"  # the last one sent wins
        assert restored["session_state"]["k10"] == 10
        assert restored["revision"] == revisions[-1]
    finally:
        sock.close()
        ctx.term()
    assert "Traceback" not in bridge.stderr()


# -- (c) change notices from worker processes -----------------------------------------------
WRITERS = 16


def _request_as(
    ctx: zmq.Context, endpoint: str, identity: bytes, message: dict[str, Any]
) -> dict[str, Any]:
    """One request on a new REQ connection with routing *identity*; its successful reply."""
    req = ctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.setsockopt(zmq.RCVTIMEO, 30_000)
    req.setsockopt(zmq.IDENTITY, identity)
    req.connect(endpoint)
    try:
        req.send_json(message)
        reply = req.recv_json()
    finally:
        req.close()
    assert isinstance(reply, dict) and reply["status"] == "success", reply
    return reply


def _notices_of_every_writer(bridge: Bridge, notify: str) -> None:
    """Sixteen connections (spread over the workers by their routing identities) each
    update one session once; a subscriber hears each acknowledged revision exactly once."""
    ctx = zmq.Context()
    try:
        with SessionClient(bridge.endpoint, "alice", timeout=10.0, retries=3) as owner:
            sid = owner.open()["session_id"]
            token = owner.call("watch_session", session_id=sid, client_id="alice")
            sub = ctx.socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            sub.connect(notify)
            sub.setsockopt(zmq.SUBSCRIBE, token["subscription"].encode())
            # the bridge refuses b"" but it opens this socket's own filter to the topic
            # the bridge grants (an opaque one, not the token)
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            deadline = time.monotonic() + START_TIMEOUT
            confirmed = False
            while not confirmed:  # the grant is confirmed by a "subscribed" notice
                assert sub.poll(int(max(0.0, deadline - time.monotonic()) * 1000)), "no grant"
                confirmed = json.loads(sub.recv_multipart()[1])["event"] == "subscribed"
            acked: list[int] = []
            for i in range(WRITERS):
                params = {
                    "session_id": sid,
                    "client_id": "alice",
                    "state_data": {f"w{i}": i},
                    "mode": "merge",
                }
                message = {"id": f"w{i}", "command": "update_session_state", "parameters": params}
                reply = _request_as(ctx, bridge.endpoint, f"writer-{i}".encode(), message)
                acked.append(reply["result"]["revision"])
            heard: list[int] = []
            deadline = time.monotonic() + STALL_GUARD
            while not set(acked) <= set(heard):
                left = deadline - time.monotonic()
                assert left > 0 and sub.poll(int(left * 1000)), (sorted(heard), sorted(acked))
                notice = json.loads(sub.recv_multipart()[1])
                if notice["event"] == "updated":
                    heard.append(notice["revision"])
            assert sorted(heard) == sorted(acked), "a revision was heard twice"
            # a duplicate (a notice forwarded and also delivered by the store) would follow
            while sub.poll(1000):
                notice = json.loads(sub.recv_multipart()[1])
                assert notice["event"] != "updated", ("duplicate", notice, heard)
            stats = owner.call("get_session_statistics")
            assert stats["workers"] == 3
            assert stats["notifications"]["granted"] >= 1
            assert stats["notifications"]["published"] >= WRITERS
    finally:
        ctx.destroy(linger=0)


def test_notices_from_every_worker_reach_subscribers_on_a_file_store(
    tmp_path: Path, bridges: Callable[..., Bridge]
) -> None:
    notify = f"tcp://127.0.0.1:{free_port()}"
    bridge = bridges(str(tmp_path / "store"), "--workers", "2", "--notify", notify)
    _notices_of_every_writer(bridge, notify)


def test_notices_from_every_worker_reach_subscribers_once_on_redis(
    tmp_path: Path, bridges: Callable[..., Bridge], redis_server_factory: Callable[..., Any]
) -> None:
    # Redis delivers every process's changes by Pub/Sub: nothing is forwarded as well
    redis = redis_server_factory()
    notify = f"tcp://127.0.0.1:{free_port()}"
    key_file = tmp_path / "keyring.json"
    bridge = bridges(redis.url, "--key-file", str(key_file), "--workers", "2", "--notify", notify)
    _notices_of_every_writer(bridge, notify)


# -- (d) resends on new connections meet one reply cache ------------------------------------
def test_a_create_resent_on_new_connections_makes_one_session_with_workers(
    tmp_path: Path, bridges: Callable[..., Bridge]
) -> None:
    """A REQ client that times out resends on a new socket (a new routing identity);
    with a ``resend_key`` (SessionClient sends one) the resend is answered from the
    reply cache whichever worker the new connection would have reached."""
    bridge = bridges(str(tmp_path / "store"), "--workers", "2")
    ctx = zmq.Context()
    try:
        sessions = set()
        params = {"client_id": "alice", "resend_key": "r" * 24}
        message = {"id": "create-1", "command": "create_session", "parameters": params}
        for i in range(8):  # identities spread over the workers
            reply = _request_as(ctx, bridge.endpoint, f"retry-{i}".encode(), message)
            sessions.add(reply["result"]["session_id"])
        assert len(sessions) == 1, sessions
    finally:
        ctx.destroy(linger=0)

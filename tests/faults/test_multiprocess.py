"""Several processes sharing one FileStore directory under load.

Four worker processes (``mp_helper.py worker``), each with its own
ProtocolHandler(FileStore(dir)), update one shared session concurrently
(without base_revision, so lost compare-and-swaps are retried; and with a
base_revision that gets merged) and a session of their own. Afterwards every
acknowledged update is there, nothing unacknowledged is, the counters and the
revision match the number of acknowledged updates, and no process hung.

A process holding the stripe locks (``mp_helper.py hold``) makes writers with a
small ``lock_timeout`` fail with a clear ``StorageError`` (``details.reason =
"lock_timeout"``) in bounded time, while readers carry on.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from faultlib import ITERATIONS, check_reply, iterations, scratch_dir, temp_files

from stuisession import FileStore, Policy, ProtocolHandler
from stuisession.keys import ENV_KEYRING

HELPER = Path(__file__).with_name("mp_helper.py")
WORKERS = 4
#: seconds any helper process may take before the test kills it and fails
DEADLINE = 120
POLICY = Policy(rate_limit=None, max_sessions_per_client=1000)


@pytest.fixture(autouse=True)
def _no_env_keyring(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_KEYRING, raising=False)


@pytest.fixture(params=["tmpfs", "disk"] if ITERATIONS else ["tmpfs"])
def store_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """On tmpfs (fast: the most contention per second); with ``make faults`` also on the
    test disk (real fsyncs)."""
    if request.param == "disk":
        yield tmp_path / "store"
        return
    with scratch_dir(tmp_path / "scratch") as d:
        yield d / "store"


def helper(*args: str) -> subprocess.Popen[str]:
    # stderr to a file: a chatty process can never block on a full pipe
    return subprocess.Popen(
        [sys.executable, str(HELPER), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=tempfile.TemporaryFile(),
        text=True,
    )


def finish(proc: subprocess.Popen[str]) -> tuple[str, int]:
    """The rest of *proc*'s output and its exit status (stdin already closed)."""
    assert proc.stdout is not None
    out = proc.stdout.read()
    return out, proc.wait()


def kill_all(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()


@contextmanager
def watchdog(procs: list[subprocess.Popen[str]], seconds: float = DEADLINE) -> Iterator[None]:
    """Kill *procs* if they are still running after *seconds*: a blocking read of
    their output then ends (with EOF) instead of hanging the test run."""
    timer = threading.Timer(seconds, kill_all, [procs])
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        kill_all(procs)


def readline(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, "a helper process ended (or was killed by the watchdog) without answering"
    return line.strip()


def send(handler: ProtocolHandler, command: str, **params: Any) -> dict[str, Any]:
    return check_reply(
        handler.handle({"id": f"t-{time.monotonic_ns()}", "command": command, "parameters": params})
    )


@pytest.mark.slow
@pytest.mark.e2e
def test_processes_share_a_store_without_losing_updates(store_dir: Path) -> None:
    rounds = max(12, iterations(12) // 10)  # make faults: 50 rounds per process
    setup = ProtocolHandler(FileStore(store_dir), POLICY)  # creates the key file first
    shared = send(setup, "create_session", client_id="shared")["result"]["session_id"]

    procs = [helper("worker", str(store_dir), shared, f"p{i}", str(rounds)) for i in range(WORKERS)]
    outputs: list[str] = []
    with watchdog(procs):
        own: dict[str, str] = {}
        for i, p in enumerate(procs):
            line = readline(p)
            assert line.startswith("own "), line
            own[f"p{i}"] = line.split()[1]
            assert readline(p) == "ready"
        for p in procs:  # start together: the most contention
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.close()
        for p in procs:
            out, status = finish(p)
            outputs.append(out)
            assert status == 0, ("killed by the watchdog?", out[-2000:])

    acked: dict[str, list[str]] = {"shared": [], "own": [], "based": []}
    retries = 0
    for out in outputs:
        lines = out.splitlines()
        assert lines[-1] == "done", lines[-5:]
        for line in lines:
            if line.startswith("ack "):
                _, kind, key = line.split()
                acked[kind].append(key)
            elif line.startswith("retry "):
                retries += 1
    assert len(acked["shared"]) == len(acked["own"]) == WORKERS * rounds

    for handler in (setup, ProtocolHandler(FileStore(store_dir), POLICY)):
        result = send(handler, "restore_session", session_id=shared)["result"]
        state = result["session_state"]
        # every acknowledged update is there; nothing else is
        assert sorted(k for k in state if not k.startswith("based-")) == sorted(acked["shared"])
        assert sorted(k[len("based-") :] for k in state if k.startswith("based-")) == sorted(
            acked["based"]
        )
        # each process's history holds its entries once, in its order
        workspaces = result["workspace_context"]["workspaces"]
        for i in range(WORKERS):
            history = [e["source"] for e in workspaces[f"ws-p{i}"]["history"]]
            assert history == [f"p{i}-{j}" for j in range(rounds)]
        # the counters match the acknowledged updates exactly
        total = len(acked["shared"]) + len(acked["based"])
        assert result["revision"] == 1 + total
        assert result["metadata"]["updates"] == total
        assert result["metadata"]["evaluations"] == len(acked["shared"])
        for i in range(WORKERS):
            mine = send(handler, "restore_session", session_id=own[f"p{i}"])["result"]
            assert sorted(mine["session_state"]) == sorted(f"p{i}-{j}" for j in range(rounds))
            assert mine["revision"] == 1 + rounds
        stats = send(handler, "get_session_statistics")["result"]
        assert stats["total_sessions"] == 1 + WORKERS
    assert temp_files(store_dir) == []
    assert list((store_dir / "quarantine").iterdir()) == []


@pytest.mark.e2e
def test_held_stripe_lock_gives_a_bounded_lock_timeout(tmp_path: Path) -> None:
    with scratch_dir(tmp_path / "scratch") as d:
        store_dir = d / "store"
        handler = ProtocolHandler(FileStore(store_dir), POLICY)
        sid = send(handler, "create_session", client_id="alice")["result"]["session_id"]
        for i in range(3):  # a few updates: the session has history to read back
            reply = send(
                handler, "update_session_state", session_id=sid, state_data={"i": i}, mode="merge"
            )
            assert reply["status"] == "success", reply
        acked = reply["result"]

        holder = helper("hold", str(store_dir), str(DEADLINE))
        with watchdog([holder]):
            assert readline(holder) == "held"
            impatient = ProtocolHandler(FileStore(store_dir, lock_timeout=0.2), POLICY)
            for command, params in [
                ("update_session_state", {"session_id": sid, "state_data": {"x": 1}}),
                ("close_session", {"session_id": sid}),
                ("create_session", {"client_id": "alice"}),
            ]:
                start = time.monotonic()
                reply = send(impatient, command, **params)
                elapsed = time.monotonic() - start
                assert reply["error_code"] == "StorageError", (command, reply)
                assert reply["details"]["reason"] == "lock_timeout", reply
                assert "lock" in reply["error"]
                assert elapsed < 30, elapsed  # bounded (0.2 s asked; generous for a loaded CI)
            # readers take no lock: they carry on, with the last acknowledged state
            for reader in (handler, impatient):
                restored = send(reader, "restore_session", session_id=sid)
                assert restored["status"] == "success", restored
                assert restored["result"]["session_state"] == acked["session_state"]
                assert restored["result"]["revision"] == acked["revision"]
                assert send(reader, "get_session_info", session_id=sid)["status"] == "success"
            # a writer in another process gets the same clear error
            once = subprocess.run(
                [sys.executable, str(HELPER), "write-once", str(store_dir), sid, "0.2"],
                capture_output=True,
                text=True,
                timeout=DEADLINE,
                check=True,
            )
            result = json.loads(once.stdout)
            assert result["reply"]["error_code"] == "StorageError", result
            assert result["reply"]["details"]["reason"] == "lock_timeout", result
            assert result["elapsed"] < 30, result
            assert holder.stdin is not None
            holder.stdin.close()  # release the locks
            assert holder.wait() == 0
        # the locks are free again: the same impatient store writes fine
        reply = send(
            impatient, "update_session_state", session_id=sid, state_data={"x": 1}, mode="merge"
        )
        assert reply["status"] == "success", reply
        assert reply["result"]["revision"] == acked["revision"] + 1
        restored = send(
            ProtocolHandler(FileStore(store_dir), POLICY), "restore_session", session_id=sid
        )
        assert restored["result"]["session_state"] == {**acked["session_state"], "x": 1}
        assert temp_files(store_dir) == []

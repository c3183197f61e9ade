"""The bridge as a real process: SIGKILL and restart lose nothing; SIGTERM exits 0.

Each test starts ``python -m stuisession serve`` on a free loopback port with
its own file store and talks to it with plain REQ sockets, like the upstream
Rust client. Every receive has a timeout and every process is killed in a
fixture finaliser, whatever happens.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from ports import free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
#: how long a server process may take to answer its first request (slow CI, cold imports)
START_TIMEOUT = 60.0
RECV_MS = 10_000


class Bridge:
    """One ``stuisession serve`` process; stderr goes to a file (a pipe could fill up)."""

    def __init__(self, endpoint: str, store: Path, log: Path, workers: int = 1) -> None:
        self.endpoint = endpoint
        self.store = store
        self.log = log
        self.workers = workers
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("STUISESSION_KEYRING", None)  # the key file in the store must be used
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
                    str(self.store),
                    "--workers",
                    str(self.workers),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=ROOT,
                env=env,
            )
        self.wait_ready()

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
                    pytest.fail(f"server exited with {self.proc.returncode}:\n{self.stderr()}")
                # a REQ socket that timed out is stuck: a fresh one per attempt
                sock = ctx.socket(zmq.REQ)
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
        pytest.fail(f"server did not answer within {START_TIMEOUT} s:\n{self.stderr()}")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def stderr(self) -> str:
        return self.log.read_text("utf-8", "replace") if self.log.exists() else ""


@pytest.fixture(params=[1, 2], ids=["workers1", "workers2"])
def bridge(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[[], Bridge]]:
    """bridge() -> a started server (one process, or two workers behind a supervisor);
    all are SIGKILLed at the end of the test."""
    made: list[Bridge] = []

    def factory() -> Bridge:
        b = Bridge(
            f"tcp://127.0.0.1:{free_port()}",
            tmp_path / "store",
            tmp_path / "server.log",
            workers=request.param,
        )
        made.append(b)
        b.start()
        return b

    yield factory
    for b in made:
        b.kill()


class Client:
    """A REQ client like upstream's: one request, one reply, a timeout on each."""

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.REQ)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVTIMEO, RECV_MS)
        self.sock.setsockopt(zmq.SNDTIMEO, RECV_MS)
        self.sock.connect(endpoint)
        self.n = 0

    def call(self, command: str, **parameters: Any) -> dict[str, Any]:
        self.n += 1
        rid = f"{command}-{self.n}"
        self.sock.send(
            json.dumps({"id": rid, "command": command, "parameters": parameters}).encode()
        )
        reply = json.loads(self.sock.recv())
        assert reply["id"] == rid
        assert reply["status"] == "success", reply
        return reply["result"]

    def close(self) -> None:
        self.ctx.destroy(linger=0)


def _restored_state(result: dict[str, Any]) -> dict[str, Any]:
    # everything but the time left, which moves with the clock
    return {k: v for k, v in result.items() if k != "time_until_expiry"}


def test_sigkill_and_restart_restore_exact_state(bridge: Callable[[], Bridge]):
    server = bridge()
    client = Client(server.endpoint)
    try:
        created = client.call("create_session", client_id="tui-e2e")
        sid = created["session_id"]
        last: dict[str, Any] = {}
        for i in range(5):
            state = {"workspace": f"x := {i}.", "history": list(range(i)), "unicode": "λ ✓"}
            last = client.call(
                "update_session_state",
                session_id=sid,
                state_data=state,
                workspace_context={"variables": ["x"]},
            )
        client.call("update_session_state", session_id=sid, state_data={"more": True}, mode="merge")
        before = client.call("restore_session", session_id=sid)
    finally:
        client.close()
    assert before["revision"] == last["revision"] + 1 == 7
    assert before["session_state"]["more"] is True

    server.signal(signal.SIGKILL)
    assert server.wait(30) == -signal.SIGKILL

    server.start()  # same port, same store
    client = Client(server.endpoint)
    try:
        after = client.call("restore_session", session_id=sid)
        info = client.call("get_session_info", session_id=sid)
    finally:
        client.close()
    assert _restored_state(after) == _restored_state(before)
    assert after["session_state"] == {
        "workspace": "x := 4.",
        "history": [0, 1, 2, 3],
        "unicode": "λ ✓",
        "more": True,
    }
    assert after["revision"] == info["revision"] == 7
    assert info["is_active"] is True


def test_sigterm_exits_0_promptly(bridge: Callable[[], Bridge]):
    server = bridge()
    client = Client(server.endpoint)
    try:
        client.call("create_session", client_id="tui-term")
    finally:
        client.close()
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    assert server.wait(30) == 0
    assert time.monotonic() - started < 10
    log = server.stderr()
    assert "stuisession bridge listening on" in log
    assert "received SIGTERM" in log
    assert "Traceback" not in log


def test_example_client_demo(bridge: Callable[[], Bridge], tmp_path: Path):
    server = bridge()
    state_file = tmp_path / "session.json"
    base = [sys.executable, str(ROOT / "examples" / "client.py"), "--endpoint", server.endpoint]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, *args], capture_output=True, text=True, timeout=60)

    demo = run()
    assert demo.returncode == 0, demo.stderr
    assert "ok: the restored state and revision match" in demo.stdout

    assert run("--state-file", str(state_file), "create").returncode == 0
    assert oct(state_file.stat().st_mode & 0o777) == "0o600"
    upd = run("--state-file", str(state_file), "update", "--data", '{"workspace": "y := 2."}')
    assert upd.returncode == 0, upd.stderr
    server.signal(signal.SIGKILL)
    server.wait(30)
    server.start()
    restored = run("--state-file", str(state_file), "restore")
    assert restored.returncode == 0, restored.stderr
    assert "restored revision 2" in restored.stdout
    assert '"workspace": "y := 2."' in restored.stdout

    server.kill()
    gone = run("--timeout", "0.5")
    assert gone.returncode == 1
    assert "no reply" in gone.stderr

"""End to end: ``stuisession serve`` with CurveZMQ, as a separate process (issue 16).

Keys are made by ``stuisession keys curve-server`` / ``curve-client``; the
allow-list binds alice's key to the client id "alice" and mallory's key to
"mallory". Then:

* alice (allowed) creates, updates, restores and lists her session;
* a stranger with a key that is not on the list gets nothing: the handshake is
  refused (no reply within the timeout) and nothing reaches the handler;
* mallory (allowed, bound to "mallory") is denied for every command on
  alice's session, exactly as for a session that does not exist, and can not
  create sessions or list as "alice";
* the allow-list is re-read when it changes: a key removed from it is refused
  from then on, a key added is accepted, without a restart.

Each runs on a bridge of one process and on one of worker processes (the
default on several cores), where the parent authenticates and the workers
answer.
"""

from __future__ import annotations

import itertools
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from ports import free_port
from stuisession.bridge.curve import load_keypair, load_public_key

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 60.0


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stuisession", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


class Peer:
    """A REQ client with a CURVE key pair (a fresh socket per call: a timed-out REQ is stuck)."""

    def __init__(self, ctx: zmq.Context, endpoint: str, server_key: bytes, secret: Path) -> None:
        self.ctx, self.endpoint, self.server_key = ctx, endpoint, server_key
        self.public, self.secret = load_keypair(secret)
        # request ids unique per key: the reply cache is keyed by the CURVE key
        self._ids = itertools.count()

    def open(self, timeout_ms: int = 10000) -> Connection:
        """A connection that stays open (its handshake happens once)."""
        sock = self.ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, timeout_ms)
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.server_key)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)
        sock.connect(self.endpoint)
        return Connection(sock, self._ids)

    def call(
        self, command: str, timeout_ms: int = 5000, rid: str | None = None, **params: Any
    ) -> dict[str, Any] | None:
        conn = self.open(timeout_ms)
        try:
            return conn.request(command, rid=rid, **params)
        finally:
            conn.close()


class Connection:
    """One REQ connection kept open across calls (one handshake)."""

    def __init__(self, sock: zmq.Socket[bytes], ids: Iterator[int]) -> None:
        self.sock = sock
        self._ids = ids

    def request(self, command: str, rid: str | None = None, **params: Any) -> dict[str, Any] | None:
        rid = rid if rid is not None else f"r{next(self._ids)}"
        message = {"id": rid, "command": command, "parameters": params}
        self.sock.send(json.dumps(message).encode())
        try:
            reply: dict[str, Any] = json.loads(self.sock.recv())
        except zmq.Again:
            return None
        return reply

    def close(self) -> None:
        self.sock.close()


def write_allow_list(path: Path, entries: list[tuple[bytes, list[str], bool]]) -> None:
    text = ""
    for key, ids, operator in entries:
        text += (
            f'[[client]]\npublic_key = "{key.decode()}"\n'
            f"client_ids = {json.dumps(ids)}\noperator = {'true' if operator else 'false'}\n\n"
        )
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    out = tmp_path / "keys"
    made = cli("keys", "curve-server", "--out", str(out))
    assert made.returncode == 0, made.stderr
    for name in ("alice", "mallory", "stranger", "late"):
        made = cli("keys", "curve-client", "--out", str(out), "--name", name)
        assert made.returncode == 0, made.stderr
    # refuses to overwrite an existing key
    again = cli("keys", "curve-client", "--out", str(out), "--name", "alice")
    assert again.returncode != 0
    return {p.name: p for p in out.iterdir()}


# the default serve on a machine of several cores runs worker processes behind the
# parent, whose ZAP handler authenticates and forwards each message's caller; both forms
# must admit and bind keys alike (a 1-core machine runs "default" in one process too)
@pytest.fixture(params=[["--workers", "1"], ["--workers", "2"]], ids=["one-process", "workers"])
def served(
    tmp_path: Path, keys: dict[str, Path], request: pytest.FixtureRequest
) -> Iterator[tuple[str, bytes, Path, subprocess.Popen[bytes], Path]]:
    allow = tmp_path / "clients.toml"
    write_allow_list(
        allow,
        [
            (load_public_key(keys["alice.key"]), ["alice"], True),
            (load_public_key(keys["mallory.key"]), ["mallory"], False),
        ],
    )
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    log = tmp_path / "bridge.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("STUISESSION_KEYRING", None)
    with log.open("ab") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "stuisession",
                "serve",
                "--bind",
                endpoint,
                "--store",
                str(tmp_path / "store"),
                "--curve-secret",
                str(keys["server.key_secret"]),
                "--curve-clients",
                str(allow),
                "--log-level",
                "WARNING",
                *request.param,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=ROOT,
            env=env,
        )
    try:
        yield endpoint, load_public_key(keys["server.key"]), allow, proc, log
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def request_form(proc: subprocess.Popen[bytes]) -> str:
    """The ``--workers`` value *proc* was started with."""
    args = [str(a) for a in proc.args]  # type: ignore[union-attr]
    return args[args.index("--workers") + 1]


def wait_ready(peer: Peer, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"bridge exited with {proc.returncode}:\n{log.read_text()}")
        reply = peer.call("get_session_statistics", timeout_ms=300)
        if reply is not None and reply["status"] == "success":
            return
    pytest.fail(f"bridge did not answer within {START_TIMEOUT} s:\n{log.read_text()}")


def test_curve_bridge_admits_bound_keys_only(
    keys: dict[str, Path], served: tuple[str, bytes, Path, subprocess.Popen[bytes], Path]
) -> None:
    endpoint, server_key, allow, proc, log = served
    secret_mode = stat.S_IMODE(keys["server.key_secret"].stat().st_mode)
    assert secret_mode == 0o600
    ctx = zmq.Context()
    try:
        alice = Peer(ctx, endpoint, server_key, keys["alice.key_secret"])
        mallory = Peer(ctx, endpoint, server_key, keys["mallory.key_secret"])
        stranger = Peer(ctx, endpoint, server_key, keys["stranger.key_secret"])
        wait_ready(alice, proc, log)

        # a create resent on new connections (a REQ client's retry after a timeout) is
        # answered from the reply cache of the key, on one process as on workers: one
        # session, not one per connection
        resent = [
            alice.call("create_session", rid="resent-create", client_id="alice") for _ in range(6)
        ]
        assert all(r is not None and r["status"] == "success" for r in resent), resent
        assert len({r["result"]["session_id"] for r in resent if r is not None}) == 1
        first = resent[0]
        assert first is not None
        closed = alice.call("close_session", session_id=first["result"]["session_id"])
        assert closed is not None and closed["status"] == "success", closed

        # the allowed client works normally
        created = alice.call("create_session", client_id="alice")
        assert created is not None and created["status"] == "success", created
        sid = created["result"]["session_id"]
        updated = alice.call("update_session_state", session_id=sid, state_data={"secret": 42})
        assert updated is not None and updated["status"] == "success", updated
        restored = alice.call("restore_session", session_id=sid)
        assert restored is not None and restored["result"]["session_state"] == {"secret": 42}
        listed = alice.call("list_client_sessions", client_id="alice")
        assert listed is not None and listed["result"]["session_count"] == 1
        # alice's key is an operator: she sees per-connection details
        stats = alice.call("get_session_statistics")
        assert stats is not None and "connections" in stats["result"]
        # the form asked for runs: one process, or two workers and the large-request lane
        expected_processes = {"1": None, "2": 3}[request_form(proc)]
        assert stats["result"].get("workers") == expected_processes, stats

        # an unknown key is refused at the handshake: no reply at all
        assert stranger.call("get_session_statistics", timeout_ms=1500) is None

        # mallory's key is bound to "mallory": every command on alice's session is
        # denied exactly like one on a session that does not exist
        missing = "session_" + "A" * 43
        for command, extra in [
            ("restore_session", {}),
            ("get_session_info", {}),
            ("update_session_state", {"state_data": {"x": 1}}),
            ("save_context", {"tool_id": "t"}),
            ("load_context", {"tool_id": "t"}),
            ("get_context_summary", {}),
            ("clear_context", {}),
            ("rotate_credentials", {}),
            ("close_session", {}),
        ]:
            foreign = mallory.call(command, session_id=sid, **extra)
            absent = mallory.call(command, session_id=missing, **extra)
            assert foreign is not None and absent is not None
            assert foreign["status"] == "error", (command, foreign)
            strip = ("id", "timestamp")
            assert {k: v for k, v in foreign.items() if k not in strip} == {
                k: v for k, v in absent.items() if k not in strip
            }, command
            # even when claiming alice's client id
            claimed = mallory.call(command, session_id=sid, client_id="alice", **extra)
            assert claimed is not None and claimed["status"] == "error", (command, claimed)
        for command in ("create_session", "list_client_sessions"):
            reply = mallory.call(command, client_id="alice")
            assert reply is not None and reply["status"] == "error", (command, reply)
        stats = mallory.call("get_session_statistics")
        assert stats is not None and stats["status"] == "success"
        assert "connections" not in stats["result"]  # not an operator: counts only
        assert "alice" not in json.dumps(stats)
        # alice's session is untouched
        restored = alice.call("restore_session", session_id=sid)
        assert restored is not None and restored["result"]["session_state"] == {"secret": 42}

        # a connection mallory keeps open across the reload below
        kept = mallory.open()
        made = kept.request("create_session", client_id="mallory")
        assert made is not None and made["status"] == "success", made

        # the allow-list is re-read without a restart: mallory removed, "late" added
        late = Peer(ctx, endpoint, server_key, keys["late.key_secret"])
        assert late.call("get_session_statistics", timeout_ms=1000) is None
        write_allow_list(
            allow,
            [
                (load_public_key(keys["alice.key"]), ["alice"], True),
                (load_public_key(keys["late.key"]), ["late"], False),
            ],
        )
        deadline = time.monotonic() + 30
        admitted = None
        while time.monotonic() < deadline and admitted is None:
            admitted = late.call("create_session", timeout_ms=500, client_id="late")
        assert admitted is not None and admitted["status"] == "success", admitted
        assert mallory.call("get_session_statistics", timeout_ms=1500) is None
        # the connection opened before the reload is bound to nothing from now on (its
        # key is looked up per message where the handshake ran: in the parent of workers)
        for command, params in [
            ("create_session", {"client_id": "mallory"}),
            ("list_client_sessions", {"client_id": "mallory"}),
            ("restore_session", {"session_id": made["result"]["session_id"]}),
        ]:
            refused = kept.request(command, **params)
            assert refused is not None and refused["status"] == "error", (command, refused)
        kept.close()
    finally:
        ctx.destroy(linger=0)
    assert proc.poll() is None, log.read_text()

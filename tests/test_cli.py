"""The ``stuisession`` command, in-process (the e2e tests run it as a real process)."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from ports import free_port
from stuisession.cli import app as cli


@pytest.fixture(autouse=True)
def _restore_logger_level() -> Iterator[None]:
    # main() sets the level of the "stuisession" logger; don't leak it into other tests
    logger = logging.getLogger("stuisession")
    level = logger.level
    yield
    logger.setLevel(level)


def test_version_and_help(capsys: pytest.CaptureFixture[str]):
    assert cli.main(["--version"]) == 0
    assert "stuisession" in capsys.readouterr().out
    assert cli.main(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--bind", "--store", "--timeout", "--max-sessions-per-client", "--log-level"):
        assert option in out


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["nope"],
        ["serve", "--timeout", "0"],
        ["serve", "--timeout", "soon"],
        ["serve", "--max-sessions-per-client", "-1"],
        ["serve", "--log-level", "LOUD"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]):
    assert cli.main(argv) == 2
    assert "usage:" in capsys.readouterr().err


def test_policy_conflict_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    # Policy refuses an idle timeout longer than the 30-day retention
    argv = ["serve", "--store", str(tmp_path), "--timeout", str(31 * 86400)]
    assert cli.main(argv) == 2
    assert "retention" in capsys.readouterr().err


def test_invalid_endpoint_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert cli.main(["serve", "--store", str(tmp_path), "--bind", "carrier-pigeon://x"]) == 2
    assert "invalid --bind endpoint" in capsys.readouterr().err


def test_address_in_use_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    ctx = zmq.Context()
    try:
        holder = ctx.socket(zmq.REP)
        holder.setsockopt(zmq.LINGER, 0)
        holder.bind("tcp://127.0.0.1:*")
        endpoint = holder.getsockopt_string(zmq.LAST_ENDPOINT)
        assert cli.main(["serve", "--store", str(tmp_path / "s"), "--bind", endpoint]) == 1
        err = capsys.readouterr().err
        assert f"cannot bind {endpoint}" in err
        assert "Address already in use" in err
    finally:
        ctx.destroy(linger=0)


def test_unusable_store_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert cli.main(["serve", "--store", str(blocker / "store")]) == 1
    assert "error:" in capsys.readouterr().err


def test_missing_pyzmq_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.setitem(__import__("sys").modules, "zmq", None)
    assert cli.main(["serve", "--store", str(tmp_path)]) == 1
    assert "pip install" in capsys.readouterr().err


def test_serve_until_sigint(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """main() in the main thread; a helper thread talks to it, then sends SIGINT."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    store = tmp_path / "store"
    outcome: dict[str, object] = {}
    # whatever this process started with (SIG_IGN when a non-interactive shell ran the
    # suite with `&`): serve installs its own handlers and must put these back
    before = signal.getsignal(signal.SIGINT)

    def client() -> None:
        ctx = zmq.Context()
        try:
            deadline = time.monotonic() + 30
            probe_ms = 500  # doubled after each silent probe, up to 5 s (a busy machine)
            while time.monotonic() < deadline:
                sock = ctx.socket(zmq.REQ)
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.RCVTIMEO, probe_ms)
                sock.connect(endpoint)
                try:
                    sock.send_json(
                        {"id": "s", "command": "get_session_statistics", "parameters": {}}
                    )
                    outcome["reply"] = sock.recv_json()
                    break
                except zmq.Again:
                    probe_ms = min(2 * probe_ms, 5000)
                    continue
                finally:
                    sock.close()
        finally:
            ctx.destroy(linger=0)
        # only signal a server that answered: its handlers are installed by then
        if "reply" in outcome:
            os.kill(os.getpid(), signal.SIGINT)

    helper = threading.Thread(target=client)
    helper.start()
    try:
        code = cli.main(
            [
                "serve",
                "--bind",
                endpoint,
                "--store",
                str(store),
                "--timeout",
                "120",
                "--max-sessions-per-client",
                "2",
                "--cleanup-interval",
                "60",
            ]
        )
    finally:
        helper.join(60)
    assert code == 0
    reply = outcome["reply"]
    assert isinstance(reply, dict)
    assert reply["result"]["default_timeout"] == 120
    assert reply["result"]["max_sessions_per_client"] == 2
    assert reply["result"]["cleanup_interval"] == 60
    err = capsys.readouterr().err
    assert f"stuisession bridge listening on {endpoint}" in err
    # the banner names the store, mode, durability and the policy in force
    assert f"store: file {store}" in err
    assert "mode: compat" in err and "durability: fsync" in err
    assert "idle timeout 120 s" in err and "2 sessions per client" in err
    assert "rate limit 100/s per client, burst 200" in err
    assert (store / "keyring.json").exists()
    assert oct((store / "keyring.json").stat().st_mode & 0o777) == "0o600"
    # the previous handlers are back
    assert signal.getsignal(signal.SIGINT) is before
    assert json.dumps(reply)  # plain JSON


def test_python_dash_m_entry_point():
    import runpy
    import sys

    argv = sys.argv
    sys.argv = ["stuisession", "--version"]
    try:
        with pytest.raises(SystemExit) as exc:
            runpy.run_module("stuisession", run_name="__main__")
    finally:
        sys.argv = argv
    assert exc.value.code == 0

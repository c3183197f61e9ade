"""CLI manners (issue 20): pipes, global flags, usage errors, exit codes, the start
banner, and ``serve``/``export`` that validate before they create anything."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from ports import free_port
from stuisession import FileStore, Policy, ProtocolHandler
from stuisession.cli import app as cli


@pytest.fixture(autouse=True)
def _restore_logger_level() -> Iterator[None]:
    # main() sets the level of the "stuisession" logger; don't leak it into other tests
    logger = logging.getLogger("stuisession")
    level = logger.level
    yield
    logger.setLevel(level)


def populated_store(root: Path, sessions: int = 3) -> None:
    handler = ProtocolHandler(FileStore(root, fsync=False), Policy())
    for i in range(sessions):
        reply = handler.handle(
            {"id": str(i), "command": "create_session", "parameters": {"client_id": f"c{i}"}}
        )
        assert reply["status"] == "success", reply


def created_entries(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir()) if path.exists() else []


# -- pipes --------------------------------------------------------------------------------
def test_list_into_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    store = tmp_path / "store"
    populated_store(store)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written: EPIPE at once
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "stuisession", "list", "--store", str(store)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            timeout=120,
            check=False,
        )
    finally:
        os.close(write_end)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b""


# -- flags and usage ----------------------------------------------------------------------
def test_global_flags_before_subcommand(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "store"
    populated_store(store)
    assert cli.main(["--log-level", "DEBUG", "list", "--store", str(store)]) == 0
    assert logging.getLogger("stuisession").level == logging.DEBUG
    assert "3 session(s)" in capsys.readouterr().out
    # after the sub-command as before; the later one wins
    assert (
        cli.main(["--log-level", "DEBUG", "list", "--log-level", "ERROR", "--store", str(store)])
        == 0
    )
    assert logging.getLogger("stuisession").level == logging.ERROR


def test_usage_error_prints_the_subcommand_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["list", "--no-such-flag"]) == 2
    err = capsys.readouterr().err
    assert "usage: stuisession list" in err
    assert "unrecognized arguments: --no-such-flag" in err
    assert cli.main(["keys", "rotate", "--bogus"]) == 2
    assert "usage: stuisession keys rotate" in capsys.readouterr().err


def test_bad_policy_values_exit_2_and_create_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "store"
    bind = f"tcp://127.0.0.1:{free_port()}"
    # from the environment
    monkeypatch.setenv("STUISESSION_SESSION_TIMEOUT", "-5")
    assert cli.main(["serve", "--bind", bind, "--store", str(store)]) == 2
    assert "usage: stuisession serve" in capsys.readouterr().err
    monkeypatch.delenv("STUISESSION_SESSION_TIMEOUT")
    # from a config file
    config = tmp_path / "policy.toml"
    config.write_text("[policy]\nrate_burst = 0\n")
    assert cli.main(["serve", "--bind", bind, "--store", str(store), "--config", str(config)]) == 2
    # an option value argparse can not catch: timeout above the retention
    monkeypatch.setenv("STUISESSION_RETENTION", "10")
    assert cli.main(["serve", "--bind", bind, "--store", str(store), "--timeout", "60"]) == 2
    assert not store.exists()
    assert created_entries(tmp_path) == ["policy.toml"]


# -- serve validates before it creates ----------------------------------------------------
def test_serve_creates_nothing_when_bind_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "store"
    ctx = zmq.Context()
    try:
        busy = ctx.socket(zmq.ROUTER)
        port = busy.bind_to_random_port("tcp://127.0.0.1")
        code = cli.main(["serve", "--bind", f"tcp://127.0.0.1:{port}", "--store", str(store)])
    finally:
        ctx.destroy(linger=0)
    assert code == 1
    assert "cannot bind" in capsys.readouterr().err
    assert created_entries(tmp_path) == []
    # a malformed endpoint is a usage error, and creates nothing either
    assert cli.main(["serve", "--bind", "tcp://nowhere:notaport", "--store", str(store)]) == 2
    assert created_entries(tmp_path) == []


def test_serve_creates_nothing_when_redis_is_unreachable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STUISESSION_KEYRING", raising=False)
    bind = f"tcp://127.0.0.1:{free_port()}"
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    key = tmp_path / "keys" / "keyring.json"
    (tmp_path / "keys").mkdir()
    code = cli.main(["serve", "--bind", bind, "--store", url, "--key-file", str(key)])
    assert code == 1
    assert "cannot reach the Redis store" in capsys.readouterr().err
    assert not key.exists()
    # no keyring given for a Redis store: a usage error, no ./.stuisession/keyring.json
    assert cli.main(["serve", "--bind", bind, "--store", url]) == 2
    assert "--key-file" in capsys.readouterr().err
    assert created_entries(tmp_path) == ["keys"]
    assert created_entries(tmp_path / "keys") == []


def test_serve_refuses_a_store_path_that_is_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "not-a-dir"
    path.write_text("x")
    bind = f"tcp://127.0.0.1:{free_port()}"
    assert cli.main(["serve", "--bind", bind, "--store", str(path)]) == 1
    assert "not a directory" in capsys.readouterr().err


def test_serve_policy_turns_the_rate_limit_on_and_config_can_turn_it_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stuisession.cli.serve import serve_policy

    parser = cli.build_parser()
    args = parser.parse_args(["serve"])
    served = serve_policy(args)
    assert (served.rate_limit, served.rate_burst) == (100.0, 200)
    assert Policy().rate_limit is None  # the embedded default: no limit
    monkeypatch.setenv("STUISESSION_RATE_LIMIT", "none")
    assert serve_policy(args).rate_limit is None
    monkeypatch.setenv("STUISESSION_RATE_LIMIT", "7")
    assert serve_policy(args).rate_limit == 7.0


# -- export -------------------------------------------------------------------------------
def test_export_files_are_private_and_a_previous_export_is_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    populated_store(store)
    out = tmp_path / "export"
    out.mkdir(mode=0o755)
    os.chmod(out, 0o755)  # an existing, world-readable directory
    assert cli.main(["export", "--store", str(store), str(out)]) == 0
    files = list(out.iterdir())
    assert len(files) == 4  # three snapshots and the manifest
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    manifest = (out / "manifest.json").read_bytes()
    capsys.readouterr()

    assert cli.main(["export", "--store", str(store), str(out)]) == 1
    assert "--force" in capsys.readouterr().err
    assert (out / "manifest.json").read_bytes() == manifest
    assert cli.main(["export", "--store", str(store), str(out), "--force"]) == 0

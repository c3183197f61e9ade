"""The admin subcommands of ``stuisession``, in-process against real stores."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ports import free_port
from stuisession import FileStore, ManualClock, Policy, ProtocolHandler
from stuisession.admin import core as admin
from stuisession.cli import _common
from stuisession.cli import app as cli
from stuisession.ids import new_session_id
from stuisession.keys import Keyring
from stuisession.security.audit import AuditLog
from stuisession.service.core import SessionService
from stuisession.state.model import Session, SessionState
from stuisession.stores.file.layout import session_stem
from stuisession.stores.redis import RedisStore

#: put into every state; must never appear in list/show output
SECRET = "hunter2-TOP-SECRET-value"
HOUR = 3600
DAY = 86400


@pytest.fixture(autouse=True)
def _restore_logger_level() -> Iterator[None]:
    # main() sets the level of the "stuisession" logger; don't leak it into other tests
    logger = logging.getLogger("stuisession")
    level = logger.level
    yield
    logger.setLevel(level)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


class Populated:
    """A file store filled through the protocol, with an audit log."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ids: dict[str, str] = {}

    def handler(self, clock: ManualClock | None = None, **policy: Any) -> ProtocolHandler:
        # no journal: every update rewrites the snapshot, so backups exist to check
        store = FileStore(self.root, fsync=False, journal=False)
        audit = AuditLog(self.root / "audit.log", keyring=store.codec.keyring, fsync=False)
        return ProtocolHandler(store, Policy(rate_limit=None, **policy), clock=clock, audit=audit)

    def create(self, name: str, client: str, handler: ProtocolHandler, *, updates: int = 1) -> str:
        reply = handler.handle(
            {"id": f"c-{name}", "command": "create_session", "parameters": {"client_id": client}}
        )
        assert reply["status"] == "success", reply
        sid: str = reply["result"]["session_id"]
        for i in range(updates):
            params: dict[str, Any] = {
                "session_id": sid,
                "state_data": {"api_token": SECRET, "n": i},
                "changes": {
                    "workspaces": {"main": {"variables": {"x": SECRET}, "contents": SECRET}}
                },
                "append_history": {"main": [{"source": SECRET, "printed": SECRET}]},
            }
            reply = handler.handle(
                {"id": f"u-{name}-{i}", "command": "update_session_state", "parameters": params}
            )
            assert reply["status"] == "success", reply
        self.ids[name] = sid
        return sid

    def close(self, name: str, handler: ProtocolHandler) -> None:
        reply = handler.handle(
            {
                "id": f"x-{name}",
                "command": "close_session",
                "parameters": {"session_id": self.ids[name]},
            }
        )
        assert reply["status"] == "success", reply

    def path_of(self, name: str, generation: int = 0) -> Path:
        sid = self.ids[name]
        stem = session_stem(self.root, sid)
        path = self.root / "sessions" / stem[:2] / f"{stem}.snap"
        return path if generation == 0 else path.with_name(f"{path.name}.{generation}")

    def stored_size(self, name: str) -> int:
        """Snapshot plus journal: the bytes the session takes on disk."""
        journal = self.path_of(name).with_suffix(".jnl")
        extra = journal.stat().st_size if journal.exists() else 0
        return self.path_of(name).stat().st_size + extra


@pytest.fixture
def pop(tmp_path: Path) -> Populated:
    """alice: two active sessions (with backups); bob: one closed; carol: one expired."""
    p = Populated(tmp_path / "store")
    now = p.handler()
    p.create("a1", "alice", now, updates=3)
    p.create("a2", "alice", now, updates=1)
    p.create("b1", "bob", now, updates=1)
    p.close("b1", now)
    two_hours_ago = p.handler(clock=ManualClock(time.time() - 2 * HOUR))
    p.create("c1", "carol", two_hours_ago, updates=1)
    return p


def flip_byte(path: Path, offset: int = -40) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


# -- parsing ------------------------------------------------------------------------------
def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for name in ("serve", "list", "show", "verify", "gc", "export", "import", "keys", "audit"):
        assert name in out
    assert "status" in out
    for argv in (
        ["list", "--help"],
        ["show", "--help"],
        ["verify", "--help"],
        ["gc", "--help"],
        ["export", "--help"],
        ["import", "--help"],
        ["keys", "rotate", "--help"],
        ["keys", "list", "--help"],
        ["audit", "verify", "--help"],
        ["status", "--help"],
    ):
        code, out, _ = run(capsys, *argv)
        assert code == 0, argv
        assert "--log-level" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["keys"],
        ["audit"],
        ["show"],
        ["gc", "--retention", "0"],
        ["status", "--timeout", "0"],
        ["status", "--timeout", "soon"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert "usage:" in err


def test_missing_store_exits_1_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope"
    for argv in (["list"], ["verify"], ["gc"], ["show", "session_" + "A" * 43]):
        code, _, err = run(capsys, *argv, "--store", str(missing))
        assert code == 1
        assert "there is no store at" in err
    assert not missing.exists()


def test_store_without_keyring_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "s").mkdir()
    code, _, err = run(capsys, "list", "--store", str(tmp_path / "s"))
    assert code == 1
    assert "keyring.json does not exist" in err
    assert not (tmp_path / "s" / "keyring.json").exists()


# -- list / show ---------------------------------------------------------------------------
def test_list_shows_records_never_state(pop: Populated, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "list", "--store", str(pop.root))
    assert code == 0
    assert SECRET not in out
    lines = out.splitlines()
    assert lines[0].split() == ["SESSION", "CLIENT", "CREATED", "LAST", "ACCESS", "SIZE", "STATE"]
    for name, state in (("a1", "active"), ("a2", "active"), ("b1", "closed"), ("c1", "expired")):
        sid = pop.ids[name]
        (row,) = [line for line in lines if line.startswith(sid[:16] + "…")]
        assert sid not in row  # shortened
        assert row.endswith(state)
        assert str(pop.stored_size(name)) in row.split()
    assert "4 session(s): 2 active, 1 closed, 1 expired" in out
    # columns are aligned: every row has its state column at the same offset
    assert len({line.rfind("  ") for line in lines[1:5]}) == 1

    code, out, _ = run(capsys, "list", "--store", str(pop.root), "--json")
    assert code == 0
    assert SECRET not in out
    doc = json.loads(out)
    assert doc["count"] == 4
    by_id = {s["session_id"]: s for s in doc["sessions"]}
    assert set(by_id) == set(pop.ids.values())
    assert by_id[pop.ids["b1"]]["state"] == "closed"
    assert by_id[pop.ids["a1"]]["size"] == pop.stored_size("a1")


def test_list_by_client(pop: Populated, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "list", "--store", f"file:{pop.root}", "--client", "alice", "--json")
    assert code == 0
    assert {s["session_id"] for s in json.loads(out)["sessions"]} == {pop.ids["a1"], pop.ids["a2"]}
    code, out, _ = run(capsys, "list", "--store", str(pop.root), "--client", "nobody")
    assert (code, out) == (0, "no sessions\n")


def test_show_summarises_without_values(pop: Populated, capsys: pytest.CaptureFixture[str]) -> None:
    sid = pop.ids["a1"]
    code, out, _ = run(capsys, "show", "--store", str(pop.root), sid)
    assert code == 0
    assert SECRET not in out
    fields = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in out.splitlines() if line)
    assert fields["session_id"] == sid
    assert fields["client_id"] == "alice"
    assert fields["state"] == "active"
    assert fields["revision"] == "4"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", fields["created_at"])
    assert fields["workspaces"] == "1"
    assert fields["variables"] == "1"
    assert fields["history"] == "3"
    assert fields["session_state keys"] == "api_token, n"
    # the current state as sealed: what the next compaction writes to disk
    from stuisession import FileStore

    FileStore(pop.root).load_snapshot(sid)
    assert fields["snapshot size"] == f"{pop.path_of('a1').stat().st_size} bytes"
    assert fields["encrypted"] == "yes"
    ring = json.loads((pop.root / "keyring.json").read_text())
    assert fields["key id"] == ring["current"]
    for material in ring["keys"].values():
        assert material not in out

    # a prefix as `list` prints it works too
    code, out, _ = run(capsys, "show", "--store", str(pop.root), "--json", sid[:16] + "…")
    assert code == 0
    assert SECRET not in out
    doc = json.loads(out)
    assert doc["session"]["session_id"] == sid
    assert doc["summary"]["history"] == 3
    assert doc["summary"]["session_state_keys"] == ["api_token", "n"]
    assert doc["snapshot"]["schema_version"] == 2


def test_show_errors(pop: Populated, capsys: pytest.CaptureFixture[str]) -> None:
    store = str(pop.root)
    code, _, err = run(capsys, "show", "--store", store, "session_" + "A" * 43)
    assert code == 1
    assert "SessionNotFound" in err
    code, _, err = run(capsys, "show", "--store", store, "session_")
    assert code == 1
    assert "prefix" in err
    flip_byte(pop.path_of("a1"))
    code, _, err = run(capsys, "show", "--store", store, pop.ids["a1"])
    assert code == 1
    assert "failed its check" in err
    # read-only: the bad file was not replaced by a backup
    assert not any((pop.root / "quarantine").iterdir())


# -- verify ----------------------------------------------------------------------------------
def test_verify_clean_store(pop: Populated, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "verify", "--store", str(pop.root))
    assert code == 0
    # backups: a1 2 (3 updates, 2 kept), a2 1, b1 2 (an update and the close), c1 1
    assert "checked 10 files (4 snapshots, 6 backups): all OK" in out
    assert "[" not in err  # stderr is not a terminal: no progress bar


def test_verify_reports_bad_snapshot_and_bad_backup(
    pop: Populated, capsys: pytest.CaptureFixture[str]
) -> None:
    bad_current = pop.path_of("a2")
    bad_backup = pop.path_of("a1", 2)
    flip_byte(bad_current)
    flip_byte(bad_backup, offset=100)
    code, out, _ = run(capsys, "verify", "--store", str(pop.root))
    assert code == 1
    bad_lines = [line for line in out.splitlines() if line.startswith("BAD ")]
    assert len(bad_lines) == 2
    assert any(line.startswith(f"BAD {bad_current}: ") for line in bad_lines)
    assert any(line.startswith(f"BAD {bad_backup}: ") for line in bad_lines)
    assert "failed its integrity check" in out
    assert "2 bad" in out

    code, out, _ = run(capsys, "verify", "--store", str(pop.root), "--json")
    assert code == 1
    doc = json.loads(out)
    assert doc["ok"] is False
    assert {f["path"] for f in doc["failures"]} == {str(bad_current), str(bad_backup)}
    assert {f["session_id"] for f in doc["failures"]} == {pop.ids["a1"], pop.ids["a2"]}
    # verification is read-only
    assert not any((pop.root / "quarantine").iterdir())


def test_verify_truncated_snapshot(pop: Populated, capsys: pytest.CaptureFixture[str]) -> None:
    path = pop.path_of("c1")
    path.write_bytes(path.read_bytes()[:50])
    code, out, _ = run(capsys, "verify", "--store", str(pop.root))
    assert code == 1
    assert f"BAD {path}: snapshot is truncated" in out


def test_verify_2000_sessions_quickly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "big"
    store = FileStore(root, fsync=False)
    now = time.time()
    for i in range(2000):
        store.create(
            Session(
                session_id=new_session_id(),
                client_id=f"client{i % 40}",
                created_at=now,
                last_accessed=now,
                last_modified=now,
                expires_at=now + HOUR,
                timeout=HOUR,
                revision=1,
                state=SessionState(session_state={"k": SECRET, "i": i}),
            )
        )
    started = time.monotonic()
    code, out, err = run(capsys, "verify", "--store", str(root), "--progress")
    elapsed = time.monotonic() - started
    assert code == 0
    assert "checked 2000 files (2000 snapshots, 0 backups): all OK" in out
    assert err.rstrip().endswith(f"[{'#' * 30}] 2000/2000")
    # ~0.2 s on a laptop, 7-90 s with coverage on a busy 2-core box: the bound is only a
    # hang guard (a quadratic blow-up, 2,000 x 0.2 s on a laptop, would still exceed it)
    assert elapsed < 300


# -- gc ----------------------------------------------------------------------------------------
def test_gc_dry_run_then_real(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = Populated(tmp_path / "store")
    now = p.handler()
    p.create("active", "alice", now)
    p.create("closed", "bob", now)
    p.close("closed", now)
    p.create("expired", "carol", p.handler(clock=ManualClock(time.time() - 2 * HOUR)))
    # idle for a day but its two-day timeout keeps it active: only a short retention removes it
    p.create(
        "old",
        "dave",
        p.handler(clock=ManualClock(time.time() - DAY), session_timeout=2 * DAY),
    )
    store = str(p.root)

    code, out, _ = run(capsys, "gc", "--store", store, "--dry-run")
    assert code == 0
    assert "dry run: would remove 2 sessions" in out
    assert p.ids["closed"][:16] + "…" in out
    assert p.ids["expired"][:16] + "…" in out
    assert p.ids["old"][:16] not in out

    code, out, _ = run(capsys, "gc", "--store", store, "--dry-run", "--retention", "3600", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["would_remove"] == 3
    reasons = {s["session_id"]: s["reason"] for s in doc["sessions"]}
    assert reasons == {
        p.ids["closed"]: "closed",
        p.ids["expired"]: "expired",
        p.ids["old"]: "retention",
    }
    assert all(p.path_of(name).exists() for name in p.ids)  # a dry run deletes nothing

    code, out, _ = run(capsys, "gc", "--store", store, "--retention", "3600")
    assert code == 0
    assert "removed 3 sessions (examined 4)" in out
    assert p.path_of("active").exists()
    assert not any(p.path_of(n).exists() for n in ("closed", "expired", "old"))
    assert not list(p.path_of("closed").parent.glob(p.ids["closed"] + "*"))  # backups too

    code, out, _ = run(capsys, "gc", "--store", store, "--json")
    assert code == 0
    assert json.loads(out) == {"removed": 0, "examined": 1, "interrupted": False}
    # every deletion and the runs themselves are in the (still valid) audit log
    code, out, _ = run(capsys, "audit", "verify", "--store", store)
    assert code == 0
    events = [json.loads(line)["event"] for line in (p.root / "audit.log").read_text().splitlines()]
    assert events.count("expire") == 3
    assert events.count("gc") == 2


def test_gc_timeout_above_retention_is_a_usage_error(
    pop: Populated, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(
        capsys, "gc", "--store", str(pop.root), "--timeout", "7200", "--retention", "3600"
    )
    assert code == 2
    assert "retention" in err
    # a retention below the default timeout lowers the timeout instead
    code, _, _ = run(capsys, "gc", "--store", str(pop.root), "--dry-run", "--retention", "60")
    assert code == 0


def test_gc_ctrl_c_stops_between_sessions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    p = Populated(tmp_path / "store")
    old = p.handler(clock=ManualClock(time.time() - 2 * HOUR), max_sessions_per_client=20)
    for i in range(10):
        p.create(f"s{i}", "alice", old, updates=0)
    original = SessionService.sweep_step
    calls = 0

    def sweep_step(self: SessionService, max_items: int | None = None) -> Any:
        nonlocal calls
        calls += 1
        result = original(self, max_items)
        if calls == 3:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of the sweep
        return result

    monkeypatch.setattr(SessionService, "sweep_step", sweep_step)
    # what this process started with (SIG_IGN when a non-interactive shell ran the suite
    # with `&`): gc catches Ctrl-C either way and must put this back
    before = signal.getsignal(signal.SIGINT)
    code, out, _ = run(capsys, "gc", "--store", str(p.root))
    assert code == 130
    assert "interrupted after examining 3 sessions; removed 3" in out
    assert signal.getsignal(signal.SIGINT) is before
    remaining = [n for n in p.ids if p.path_of(n).exists()]
    assert len(remaining) == 7
    monkeypatch.setattr(SessionService, "sweep_step", original)
    code, out, _ = run(capsys, "verify", "--store", str(p.root))
    assert code == 0
    code, out, _ = run(capsys, "gc", "--store", str(p.root))
    assert (code, out) == (0, "removed 7 sessions (examined 7)\n")


def test_gc_keyboard_interrupt_exits_130(
    pop: Populated, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(self: SessionService, max_items: int | None = None) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(SessionService, "sweep_step", interrupted)
    code, out, _ = run(capsys, "gc", "--store", str(pop.root), "--json", "--audit", "off")
    assert code == 130
    assert json.loads(out) == {"removed": 0, "examined": 0, "interrupted": True}


# -- export / import ---------------------------------------------------------------------------
def share_keyring(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / "keyring.json", dst / "keyring.json")
    os.chmod(dst / "keyring.json", 0o600)


def test_export_import_between_file_stores(
    pop: Populated, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "export"
    code, out, _ = run(capsys, "export", "--store", str(pop.root), str(out_dir))
    assert code == 0
    assert "exported 4 sessions" in out
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert set(manifest) == set(pop.ids.values())
    assert oct(out_dir.stat().st_mode & 0o777) == "0o700"
    assert oct((out_dir / "manifest.json").stat().st_mode & 0o777) == "0o600"

    target = tmp_path / "target"
    share_keyring(pop.root, target)
    code, out, _ = run(capsys, "import", "--store", str(target), str(out_dir))
    assert code == 0
    assert "imported 4 of 4 sessions (0 already in the store, skipped)" in out
    code, out, _ = run(capsys, "import", "--store", str(target), str(out_dir), "--json")
    assert code == 0
    assert json.loads(out) == {"total": 4, "imported": 0, "skipped": 4}

    src, dst = FileStore(pop.root, fsync=False), FileStore(target, fsync=False)
    for sid in pop.ids.values():
        assert dst.load(sid) == src.load(sid)
    assert dst.load(pop.ids["a1"]).state.session_state["api_token"] == SECRET
    code, out, _ = run(capsys, "verify", "--store", str(target))
    assert code == 0


def test_import_refuses_damaged_export_and_wrong_keyring(
    pop: Populated, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "export"
    assert cli.main(["export", "--store", str(pop.root), str(out_dir)]) == 0
    # another keyring: nothing opens, nothing is imported
    stranger = tmp_path / "stranger"
    FileStore(stranger, fsync=False)
    code, _, err = run(capsys, "import", "--store", str(stranger), str(out_dir))
    assert code == 1
    assert "not in the keyring" in err
    assert admin.snapshot_files(FileStore(stranger, fsync=False)) == []
    # a changed file fails its checksum
    target = tmp_path / "target"
    share_keyring(pop.root, target)
    flip_byte(out_dir / f"{pop.ids['b1']}.snap")
    code, _, err = run(capsys, "import", "--store", str(target), str(out_dir))
    assert code == 1
    assert "does not match its checksum" in err
    assert admin.snapshot_files(FileStore(target, fsync=False)) == []
    # a manifest naming a path instead of a session id is refused
    (out_dir / "manifest.json").write_text(json.dumps({"../../etc/passwd": "0" * 64}))
    code, _, err = run(capsys, "import", "--store", str(target), str(out_dir))
    assert code == 1
    assert "not a session id" in err


def test_export_skips_unreadable_and_exits_1(
    pop: Populated, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for generation in (0, 1, 2):
        flip_byte(pop.path_of("b1", generation))  # no valid generation left
    code, out, _ = run(capsys, "export", "--store", str(pop.root), str(tmp_path / "e"), "--json")
    assert code == 1
    assert json.loads(out)["exported"] == 3
    assert json.loads(out)["not_exported"] == 1


def test_export_import_into_redis(
    pop: Populated,
    tmp_path: Path,
    redis_url: str,
    redis_prefix: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out_dir = tmp_path / "export"
    assert cli.main(["export", "--store", str(pop.root), str(out_dir)]) == 0
    key_file = str(pop.root / "keyring.json")
    redis = ["--store", redis_url, "--key-file", key_file, "--redis-prefix", redis_prefix]
    code, out, _ = run(capsys, "import", *redis, str(out_dir))
    assert code == 0
    assert "imported 4 of 4" in out

    code, out, _ = run(capsys, "list", *redis, "--json")
    assert code == 0
    assert SECRET not in out
    sessions = json.loads(out)["sessions"]
    assert {s["session_id"] for s in sessions} == set(pop.ids.values())
    assert all(isinstance(s["size"], int) and s["size"] > 0 for s in sessions)
    code, out, _ = run(capsys, "list", *redis, "--client", "alice", "--json")
    assert json.loads(out)["count"] == 2
    code, out, _ = run(capsys, "show", *redis, pop.ids["a1"][:20])
    assert code == 0
    assert SECRET not in out
    code, out, _ = run(capsys, "verify", *redis)
    assert code == 0
    assert "checked 4 files (4 snapshots, 0 backups): all OK" in out

    # and back out of Redis into a fresh file store sharing the keyring
    back = tmp_path / "back"
    assert cli.main(["export", *redis, str(tmp_path / "export2")]) == 0
    share_keyring(pop.root, back)
    code, out, _ = run(capsys, "import", "--store", str(back), str(tmp_path / "export2"))
    assert code == 0
    assert "imported 4 of 4" in out

    # a Redis store without a keyring is refused with a hint
    code, _, err = run(capsys, "list", "--store", redis_url, "--redis-prefix", redis_prefix)
    assert code == 1
    assert "--key-file" in err


# -- keys -------------------------------------------------------------------------------------
def test_keys_rotate_then_verify(pop: Populated, capsys: pytest.CaptureFixture[str]) -> None:
    store = str(pop.root)
    old = json.loads((pop.root / "keyring.json").read_text())
    code, out, _ = run(capsys, "keys", "list", "--store", store)
    assert code == 0
    assert out.splitlines()[1].split() == [old["current"], "yes"]

    code, out, err = run(capsys, "keys", "rotate", "--store", store)
    assert code == 0
    new = json.loads((pop.root / "keyring.json").read_text())
    assert new["current"] != old["current"]
    assert f"new current key: {new['current']}" in out
    assert "re-sealed 4 sessions, skipped 0, failed 0" in out
    assert "restart running bridges" in err
    for material in new["keys"].values():
        assert material not in out + err
    assert oct((pop.root / "keyring.json").stat().st_mode & 0o777) == "0o600"

    code, out, _ = run(capsys, "keys", "list", "--store", store, "--json")
    assert json.loads(out) == {"current": new["current"], "keys": [old["current"], new["current"]]}
    # every snapshot is sealed with the new key; backups with the old one still verify
    code, out, _ = run(capsys, "verify", "--store", store)
    assert code == 0
    code, out, _ = run(capsys, "show", "--store", store, "--json", pop.ids["a2"])
    assert json.loads(out)["snapshot"]["key_id"] == new["current"]
    # the rotation was audited and the log still verifies across the two keys
    code, out, _ = run(capsys, "audit", "verify", "--store", store)
    assert code == 0
    assert '"event":"key_rotation"' in (pop.root / "audit.log").read_text()
    # a second rotation has nothing left under an old key to skip, and says so in JSON
    code, out, _ = run(capsys, "keys", "rotate", "--store", store, "--json", "--audit", "off")
    assert code == 0
    doc = json.loads(out)
    assert doc["resealed"] == 4
    assert doc["failed"] == 0


def test_keys_rotate_with_separate_key_file(
    pop: Populated, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = tmp_path / "keys" / "ring.json"
    share_keyring(pop.root, key_file.parent)
    (key_file.parent / "keyring.json").rename(key_file)
    code, out, _ = run(
        capsys, "keys", "rotate", "--store", str(pop.root), "--key-file", str(key_file)
    )
    assert code == 0
    assert str(key_file) in out
    assert len(json.loads(key_file.read_text())["keys"]) == 2
    assert len(json.loads((pop.root / "keyring.json").read_text())["keys"]) == 1
    code, _, _ = run(capsys, "verify", "--store", str(pop.root), "--key-file", str(key_file))
    assert code == 0


def test_keys_rotate_on_redis_needs_a_key_file(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "keys", "rotate", "--store", "redis://127.0.0.1:1/0")
    assert code == 2
    assert "--key-file" in err


def test_keys_list_refuses_readable_key_file(
    pop: Populated, capsys: pytest.CaptureFixture[str]
) -> None:
    os.chmod(pop.root / "keyring.json", 0o644)
    code, _, err = run(capsys, "keys", "list", "--store", str(pop.root))
    assert code == 1
    assert "chmod 600" in err


# -- audit ------------------------------------------------------------------------------------
def test_audit_verify_ok_then_truncated(pop: Populated, capsys: pytest.CaptureFixture[str]) -> None:
    log = pop.root / "audit.log"
    lines = log.read_bytes().splitlines(keepends=True)
    code, out, _ = run(capsys, "audit", "verify", "--store", str(pop.root))
    assert code == 0
    assert out.startswith("OK: ")
    assert f"{len(lines)} lines verified" in out

    log.write_bytes(b"".join(lines[:-2]))
    code, out, _ = run(capsys, "audit", "verify", "--store", str(pop.root))
    assert code == 1
    assert f"FAILED: {log}: line {len(lines) - 1}: log truncated" in out
    code, out, _ = run(
        capsys, "audit", "verify", "--log", str(log), "--store", str(pop.root), "--json"
    )
    assert code == 1
    doc = json.loads(out)
    assert doc["ok"] is False
    assert doc["first_bad_line"] == len(lines) - 1

    code, out, _ = run(
        capsys, "audit", "verify", "--store", str(pop.root), "--log", str(log) + ".x"
    )
    assert code == 1
    assert "log file does not exist" in out


def test_audit_verify_detects_an_edited_line(
    pop: Populated, capsys: pytest.CaptureFixture[str]
) -> None:
    log = pop.root / "audit.log"
    lines = log.read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace('"outcome":"ok"', '"outcome":"no"')
    log.write_text("".join(lines))
    code, out, _ = run(capsys, "audit", "verify", "--store", str(pop.root))
    assert code == 1
    assert "line 2: mac does not verify" in out


# -- status -----------------------------------------------------------------------------------
def test_status_of_a_running_bridge(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from stuisession.bridge.server import BridgeServer

    handler = ProtocolHandler(FileStore(tmp_path / "s", fsync=False), Policy(rate_limit=None))
    handler.handle({"id": "1", "command": "create_session", "parameters": {"client_id": "alice"}})
    srv = BridgeServer(handler, "tcp://127.0.0.1:*")
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        code, out, _ = run(capsys, "status", "--endpoint", srv.bound_endpoint, "--timeout", "10")
        assert code == 0
        fields = dict(line.split(None, 1) for line in out.split("\n\n")[0].splitlines())
        assert fields["total_sessions"] == "1"
        assert fields["active_sessions"] == "1"
        assert fields["max_sessions_per_client"] == "5"
        assert "connections" not in fields
        # a plaintext (unauthenticated) caller sees counts only: no connection table
        assert "IDENTITY" not in out and "alice" not in out

        code, out, _ = run(
            capsys, "status", "--endpoint", srv.bound_endpoint, "--timeout", "10", "--json"
        )
        assert code == 0
        doc = json.loads(out)
        assert doc["total_sessions"] == 1
        assert "connections" not in doc
    finally:
        srv.stop()
        thread.join(10)
        srv.close()
    assert not thread.is_alive()


def test_status_without_a_bridge_times_out(capsys: pytest.CaptureFixture[str]) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    started = time.monotonic()
    code, out, err = run(capsys, "status", "--endpoint", endpoint, "--timeout", "0.3")
    assert time.monotonic() - started < 5
    assert code == 1
    assert out == ""
    assert f"no reply from {endpoint} within 0.3 s" in err


def test_status_bad_endpoint_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "status", "--endpoint", "carrier-pigeon://x", "--timeout", "0.3")
    assert code == 2
    assert "invalid --endpoint" in err


# -- helpers ---------------------------------------------------------------------------------
def test_table_formatting() -> None:
    text = _common.table(["A", "NUM"], [["x", 5], ["longer\nline\x1b[31m", 12345]], right=[1])
    cell = "longer\\nline\\x1b[31m"  # control characters escaped, never sent raw
    assert text.splitlines() == [
        "A".ljust(len(cell)) + "    NUM",
        "x".ljust(len(cell)) + "      5",
        cell + "  12345",
    ]
    assert _common.kv_table([("a", 1), ("long key", None)]) == "a         1\nlong key  -"


def test_open_store_reads_lock_striping(tmp_path: Path) -> None:
    FileStore(tmp_path / "s", lock_stripes=8, fsync=False)
    store = admin.open_store(f"file:{tmp_path / 's'}")
    assert isinstance(store, FileStore)
    with pytest.raises(Exception, match="there is no store"):
        admin.open_store(str(tmp_path / "other"))
    created = admin.open_store(str(tmp_path / "new"), create=True, fsync=False)
    assert isinstance(created, FileStore)
    assert (tmp_path / "new" / "keyring.json").exists()


def test_verify_redis_store_reports_bad_session_id(
    pop: Populated,
    tmp_path: Path,
    redis_url: str,
    redis_prefix: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import redis as redis_py

    out_dir = tmp_path / "export"
    assert cli.main(["export", "--store", str(pop.root), str(out_dir)]) == 0
    key_file = str(pop.root / "keyring.json")
    args = ["--store", redis_url, "--key-file", key_file, "--redis-prefix", redis_prefix]
    assert cli.main(["import", *args, str(out_dir)]) == 0
    client = redis_py.Redis.from_url(redis_url)
    try:
        with RedisStore(redis_url, prefix=redis_prefix, keyring=Keyring.load(key_file)) as store:
            key = store.session_key(pop.ids["a2"])  # layout 3: a keyed hash of the id
        assert pop.ids["a2"] not in key
        blob = bytearray(client.hget(key, "blob"))
        blob[-5] ^= 1
        client.hset(key, "blob", bytes(blob))
    finally:
        client.close()
    code, out, _ = run(capsys, "verify", *args)
    assert code == 1
    # named by its key, as a file store names the file
    assert f"BAD {key}: snapshot failed its integrity check" in out


def test_verify_skips_strays_and_dedups_links(
    pop: Populated, capsys: pytest.CaptureFixture[str]
) -> None:
    shard = pop.path_of("a1").parent
    (shard / f".{pop.ids['a1']}.abc.tmp").write_bytes(b"half a write")
    (shard / "notes.txt").write_text("stray")
    (shard / f"{pop.ids['a1']}.snap.old").write_bytes(b"stray")
    # a store with backups=1 re-links: the same inode under two names is read once
    os.link(pop.path_of("a1"), pop.path_of("a1", 3))
    files = admin.snapshot_files(FileStore(pop.root, fsync=False))
    assert [f.generation for f in files if f.session_id == pop.ids["a1"]] == [0, 1, 2, 3]
    flip_byte(pop.path_of("a1"))
    code, out, _ = run(capsys, "verify", "--store", str(pop.root))
    assert code == 1
    assert out.count("BAD ") == 2  # the current file and its hard link .3


def test_import_errors(pop: Populated, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "target"
    share_keyring(pop.root, target)
    bad = tmp_path / "bad"
    bad.mkdir()
    for manifest, message in (
        (None, "not an export directory"),
        ("{", "not valid JSON"),
        ("[]", "not a JSON object"),
        (json.dumps({pop.ids["a1"]: "xyz"}), "malformed checksum"),
        (json.dumps({pop.ids["a1"]: "0" * 64}), "is missing"),
    ):
        if manifest is not None:
            (bad / "manifest.json").write_text(manifest)
        code, _, err = run(capsys, "import", "--store", str(target), str(bad))
        assert code == 1
        assert message in err


def test_audit_verify_torn_tail_and_json(
    pop: Populated, capsys: pytest.CaptureFixture[str]
) -> None:
    log = pop.root / "audit.log"
    with open(log, "ab") as fh:
        fh.write(b'{"v":1,"seq":')  # a crash mid-append
    code, out, _ = run(capsys, "audit", "verify", "--store", str(pop.root))
    assert code == 0
    assert "incomplete last line" in out
    code, out, _ = run(capsys, "audit", "verify", "--store", str(pop.root), "--json")
    assert json.loads(out)["torn_tail"] is True
    code, _, err = run(capsys, "audit", "verify", "--store", "redis://127.0.0.1:1/0")
    assert code == 2
    assert "--log" in err


def test_status_error_reply_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    import zmq

    ctx = zmq.Context()
    try:
        rep = ctx.socket(zmq.REP)
        rep.setsockopt(zmq.LINGER, 0)
        rep.bind("tcp://127.0.0.1:*")
        endpoint = rep.getsockopt_string(zmq.LAST_ENDPOINT)

        def answer() -> None:
            if rep.poll(10_000):
                rep.recv()
                rep.send_json({"id": "x", "status": "error", "error": "Unknown command"})

        thread = threading.Thread(target=answer)
        thread.start()
        code, _, err = run(capsys, "status", "--endpoint", endpoint, "--timeout", "10")
        thread.join(10)
        assert code == 1
        assert "answered with an error: Unknown command" in err
    finally:
        ctx.destroy(linger=0)


def test_progress_bar(capsys: pytest.CaptureFixture[str]) -> None:
    with _common.ProgressBar(4, enabled=True, label="x ", width=4) as bar:
        for i in range(1, 5):
            bar(i)
    err = capsys.readouterr().err
    assert err.startswith("\rx [#   ] 1/4")
    assert err.endswith("\rx [####] 4/4\n")
    with _common.ProgressBar(0, enabled=True) as bar:
        bar(0)
    assert capsys.readouterr().err.endswith("] 0/0\n")
    with _common.ProgressBar(3, enabled=False) as bar:
        bar(3)
    assert capsys.readouterr().err == ""


def test_library_helpers_on_a_memory_store() -> None:
    from stuisession import MemoryStore
    from stuisession.errors import SessionNotFound

    store = MemoryStore()
    service = SessionService(store)
    created = service.create("alice").session
    rows = list(admin.iter_session_rows(store))
    assert [(info.session_id, size) for info, size in rows] == [
        (created.session_id, len(store._get(created.session_id) or b""))
    ]
    assert list(admin.verify_store(store)) == []
    assert admin.resolve_session_id(store, created.session_id[:14]) == created.session_id
    with pytest.raises(SessionNotFound, match="no session id starts"):
        admin.resolve_session_id(store, "session_zzzzzzzzzz")
    summary = admin.summarize_snapshot(admin.read_snapshot(store, created.session_id))
    assert summary["workspaces"] == 0
    assert summary["session_state_keys"] == []

"""Audit anchors: a rolled-back audit log is caught by the store's high-water marks.

Issue 15, item 7: putting back old copies of *both* ``audit.log`` and its head
file passed ``audit verify``. Every acknowledged write of a file store now
records the audit log's position (seq and mac prefix of its last line) in the
session's high-water mark; ``audit verify`` checks that the log still holds
each anchored line. A normal restart and a full disk followed by recovery
still verify.
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from stuisession import FileStore, ManualClock, Policy, ProtocolHandler, SessionService
from stuisession.cli.app import main
from stuisession.keys import ENV_KEYRING
from stuisession.security.audit import AuditLog, verify
from stuisession.stores.file import hwm
from stuisession.stores.file.layout import session_stem

OPTIONS: dict[str, Any] = {"fsync": False, "lock_stripes": 4}


@pytest.fixture(autouse=True)
def _no_env_keyring(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_KEYRING, raising=False)


class Bridge:
    """A store, its audit log and a protocol handler, as ``serve`` wires them."""

    def __init__(self, root: Path) -> None:
        self.store = FileStore(root, **OPTIONS)
        self.audit = AuditLog(root / "audit.log", keyring=self.store.codec.keyring, fsync=False)
        policy = Policy(audit_updates=True)
        service = SessionService(self.store, policy, clock=ManualClock(), audit=self.audit)
        self.handler = ProtocolHandler(service=service)

    def call(self, command: str, **params: Any) -> dict[str, Any]:
        reply = self.handler.handle({"id": "x", "command": command, "parameters": params})
        assert reply["status"] == "success", reply
        result: dict[str, Any] = reply["result"]
        return result

    def update(self, sid: str, value: int) -> None:
        changes = {"workspaces": {"default": {"variables": {"v": value}}}}
        self.call("update_session_state", session_id=sid, changes=changes)


def _audit_verify(root: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["audit", "verify", "--store", str(root)])
    return code, capsys.readouterr().out


def _hwm(root: Path, sid: str) -> Path:
    stem = session_stem(root, sid)
    return root / "sessions" / stem[:2] / f"{stem}.hwm"


def _save(root: Path) -> dict[str, bytes]:
    return {n: (root / n).read_bytes() for n in ("audit.log", "audit.log.head")}


def _put_back(root: Path, saved: dict[str, bytes]) -> None:
    for name, data in saved.items():
        (root / name).write_bytes(data)


def _busy(root: Path, updates: int = 3) -> tuple[Bridge, str]:
    b = Bridge(root)
    sid = b.call("create_session", client_id="c")["session_id"]
    for i in range(updates):
        b.update(sid, i)
    return b, sid


def test_every_acknowledged_write_records_the_audit_position(tmp_path: Path) -> None:
    b, sid = _busy(tmp_path)
    mark = hwm.read(b.store.codec.keyring, sid, str(_hwm(tmp_path, sid)), fs=b.store._layout.fs)
    assert mark.audit is not None
    seq, prefix = mark.audit
    last = json.loads((tmp_path / "audit.log").read_bytes().splitlines()[seq - 1])
    assert last["seq"] == seq and last["mac"].startswith(prefix)
    anchors = b.store.audit_anchors()
    assert anchors.damaged == () and [a[:2] for a in anchors.anchors] == [(seq, prefix)]


def test_old_copies_of_audit_log_and_head_put_back_are_detected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    b, sid = _busy(tmp_path)
    saved = _save(tmp_path)
    for i in range(3):
        b.update(sid, 10 + i)  # audited and anchored after the copy was taken
    assert _audit_verify(tmp_path, capsys)[0] == 0
    _put_back(tmp_path, saved)
    # the log and its head agree with each other: only the anchor tells
    assert verify(tmp_path / "audit.log", b.store.codec.keyring).ok
    code, out = _audit_verify(tmp_path, capsys)
    assert code == 1
    assert "log rolled back" in out and str(_hwm(tmp_path, sid)) in out
    assert main(["audit", "verify", "--store", str(tmp_path), "--no-anchors"]) == 0


def test_rolled_back_log_written_again_past_the_anchor_is_detected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    b, sid = _busy(tmp_path)
    saved = _save(tmp_path)
    b.update(sid, 10)
    b.update(sid, 11)  # anchors the line the update before it added
    _put_back(tmp_path, saved)
    # a restarted bridge appends to the old copy: its line numbers pass the anchor
    again = Bridge(tmp_path)
    for i in range(5):
        again.update(sid, 20 + i)
        again.audit.record("deny", client_id=f"x{i}", outcome="denied")
    code, out = _audit_verify(tmp_path, capsys)
    assert code == 1
    assert "another line than the one anchored" in out
    # the writes after the rollback kept the anchor (never moved to the new lines)
    # and said so as they noticed
    assert any("no longer holds line" in r.getMessage() for r in caplog.records)


def test_deleted_log_and_head_restarted_from_scratch_is_detected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, sid = _busy(tmp_path)
    (tmp_path / "audit.log").unlink()
    (tmp_path / "audit.log.head").unlink()
    assert _audit_verify(tmp_path, capsys)[0] == 1  # no log at all
    fresh = Bridge(tmp_path)  # a new log from line 1
    fresh.update(sid, 99)
    fresh.call("restore_session", session_id=sid)
    assert verify(tmp_path / "audit.log", fresh.store.codec.keyring).ok
    code, out = _audit_verify(tmp_path, capsys)
    assert code == 1
    assert "rolled back" in out or "another line" in out


def test_truncated_log_is_still_detected_with_anchors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _busy(tmp_path)
    log = tmp_path / "audit.log"
    log.write_bytes(b"".join(log.read_bytes().splitlines(keepends=True)[:-1]))
    code, out = _audit_verify(tmp_path, capsys)
    assert code == 1 and "log truncated" in out


def test_normal_restart_verifies_with_anchors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, sid = _busy(tmp_path)
    again = Bridge(tmp_path)  # a restarted bridge: anchors from its head file first
    again.update(sid, 7)
    second = again.call("create_session", client_id="d")["session_id"]
    again.update(second, 1)
    code, out = _audit_verify(tmp_path, capsys)
    assert code == 0, out
    assert "2 anchor(s) checked" in out


def test_two_bridges_sharing_store_and_log_verify_without_false_alarms(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    one, sid = _busy(tmp_path)
    two = Bridge(tmp_path)  # another process: it knows only the lines it wrote itself
    for i in range(6):
        (one if i % 2 else two).update(sid, i)
        (two if i % 3 else one).call("restore_session", session_id=sid)
    code, out = _audit_verify(tmp_path, capsys)
    assert code == 0, out
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_full_disk_then_recovery_verifies_with_a_recorded_gap(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    b, sid = _busy(tmp_path)

    def full(*args: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr("stuisession.security.audit.os.write", full)
        for _ in range(2):
            with pytest.raises(OSError):
                b.audit.record("update", client_id="c")
    b.update(sid, 5)  # anchored at the last line that was written; then the gap line
    events = [json.loads(line) for line in (tmp_path / "audit.log").read_bytes().splitlines()]
    assert any(e["event"] == "audit_gap" and "2 event(s)" in e["reason"] for e in events)
    code, out = _audit_verify(tmp_path, capsys)
    assert code == 0, out


def test_damaged_anchor_fails_audit_verify_and_names_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, sid = _busy(tmp_path)
    mark = _hwm(tmp_path, sid)
    data = bytearray(mark.read_bytes())
    data[90] ^= 0x01  # inside the audit fields of slot 0
    mark.write_bytes(bytes(data))
    code, out = _audit_verify(tmp_path, capsys)
    assert code == 1
    assert f"FAILED: {mark}: high-water mark is damaged" in out


def test_marks_of_the_previous_slot_version_are_still_read(tmp_path: Path) -> None:
    b, sid = _busy(tmp_path)
    ring = b.store.codec.keyring
    kid = ring.current_id.encode()
    body = hwm._BODY_V1.pack(hwm.MAGIC, 1, len(kid), kid, 9)
    slot = body + hwm._mac(ring, ring.current_id, sid, body)
    data = slot + bytes(hwm.SLOT_SIZE - len(slot))
    mark = hwm.parse(ring, sid, data + bytes(hwm.SLOT_SIZE))
    assert mark.revision == 9 and mark.audit is None and mark.damaged == ()


def test_a_copy_of_the_whole_store_is_the_documented_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What anchors can not see: the log, its head and every mark put back together."""
    root = tmp_path / "store"
    _, sid = _busy(root)
    shutil.copytree(root, tmp_path / "copy")
    Bridge(root).update(sid, 42)
    shutil.rmtree(root)
    shutil.copytree(tmp_path / "copy", root)
    assert _audit_verify(root, capsys)[0] == 0

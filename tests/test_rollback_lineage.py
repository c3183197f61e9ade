"""A rollback caught by the high-water mark starts a new history (issue 15, gap 3).

A client that holds a later revision of the lost history must never get a
delta against the rolled-back state, even once the session has been updated
back up to (or past) the revision it holds: the recovered state is put on a
new lineage, so the client is told it is out of sync and gets the full state.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from store_helpers import call_ok as _ok
from store_helpers import no_env_keyring as _no_env_keyring  # noqa: F401 (autouse)
from store_helpers import session_files as _files
from store_helpers import update_variable as _update
from stuisession import FileStore, ManualClock, Policy, ProtocolHandler, SessionService
from stuisession.cli.app import main
from stuisession.codec import journal
from stuisession.errors import IntegrityError
from stuisession.security.audit import AuditLog, iter_session_events

OPTIONS: dict[str, Any] = {"fsync": False, "lock_stripes": 4}


def _handler(root: Path) -> tuple[ProtocolHandler, FileStore, AuditLog]:
    store = FileStore(root, **OPTIONS)
    audit = AuditLog(root / "audit.log", keyring=store.codec.keyring, fsync=False)
    service = SessionService(store, Policy(), clock=ManualClock(), audit=audit)
    return ProtocolHandler(service=service), store, audit


def _cut_journal(root: Path, sid: str, store: FileStore) -> None:
    f = _files(root, sid)
    data = f["journal"].read_bytes()
    records = journal.open_journal(
        store.codec,
        data,
        base_tag=journal.snapshot_tag(f["snap"].read_bytes()),
        session_id=sid,
    )
    assert records is not None and len(records) >= 2
    f["journal"].write_bytes(data[: records[0].end])  # keep the first record only


def _copy_backup_over_snapshot(root: Path, sid: str, store: FileStore) -> None:
    f = _files(root, sid)
    shutil.copyfile(f["backup"], f["snap"])
    f["journal"].unlink(missing_ok=True)


@pytest.mark.parametrize(
    "roll_back", [_cut_journal, _copy_backup_over_snapshot], ids=["journal-cut", "old-snapshot"]
)
def test_client_of_a_rolled_back_history_gets_the_full_state_on_a_new_lineage(
    tmp_path: Path, roll_back: Any, caplog: pytest.LogCaptureFixture
) -> None:
    h, store, _ = _handler(tmp_path)
    sid = _ok(h, "create_session", client_id="c")["session_id"]
    _update(h, sid, "a", 0)
    store.load_snapshot(sid)  # compaction: a backup generation, then journal records
    for i in range(3):
        held = _update(h, sid, f"v{i}", i)
    n, old_lineage = held["revision"], held["lineage"]

    roll_back(tmp_path, sid, store)
    caplog.set_level(logging.ERROR, logger="stuisession.stores.file")
    h2, store2, audit2 = _handler(tmp_path)  # a restarted bridge
    params = {"session_id": sid, "since_revision": n, "lineage": old_lineage}
    first = h2.handle({"id": "r", "command": "restore_session", "parameters": params})
    if first["status"] == "error":  # the read that finds the rollback reports it
        assert first["details"]["rolled_back"] is True
        assert first["details"]["acknowledged_revision"] == n
    full = _ok(h2, "restore_session", **params)
    assert full["revision"] < n
    assert full["delta"] is False and full["delta_reason"] == "lineage"
    assert full["lineage"] != old_lineage
    assert "session_state" in full

    # the server's history moves on past the revision the client held: still
    # another history, never a delta against it
    for i in range(n - full["revision"] + 1):
        _update(h2, sid, "w", 100 + i)
    ahead = _ok(h2, "restore_session", **params)
    assert ahead["revision"] > n
    assert ahead["delta"] is False and ahead["delta_reason"] == "lineage"

    # reported: an ERROR log, the note that verify reports, the audit log
    assert store2.rollbacks() and store2.rollbacks()[0].acknowledged == n
    assert any("acknowledged revision" in r.getMessage() for r in caplog.records)
    assert main(["verify", "--store", str(tmp_path)]) != 0
    events = iter_session_events(audit2.path, audit2.keyring, sid)
    assert any(e["event"] == "integrity_failure" for e in events)


def test_verify_names_the_file_the_session_and_what_was_lost(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    h, store, _ = _handler(tmp_path)
    sid = _ok(h, "create_session", client_id="c")["session_id"]
    _update(h, sid, "a", 0)
    store.load_snapshot(sid)
    for i in range(3):
        n = _update(h, sid, f"v{i}", i)["revision"]
    _cut_journal(tmp_path, sid, store)
    snap = _files(tmp_path, sid)["snap"]

    capsys.readouterr()
    assert main(["verify", "--store", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    (line,) = [x for x in out.splitlines() if x.startswith(f"BAD {snap}: ")]
    assert f"acknowledged revision {n}, the files hold revision {n - 2}" in line
    assert "2 acknowledged revision(s) lost" in line and f"(session {sid})" in line

    with pytest.raises(IntegrityError):
        FileStore(tmp_path, **OPTIONS).load(sid)  # settled: served on, on a new lineage
    assert main(["verify", "--store", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    (line,) = [x for x in out.splitlines() if "rolled back" in x]
    assert "quarantine" in line and f"(session {sid})" in line
    assert f"acknowledged revision {n}, now serving revision {n - 2}" in line

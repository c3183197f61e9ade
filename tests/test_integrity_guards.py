"""Issue 15: no acknowledged update is dropped silently, and verify says so.

Each numbered scenario of the issue is a test named after what it protects:
rollbacks (journal cut, journal deleted, a backup copied over the snapshot),
a flipped length bit, the keyring and format.json (missing, damaged, edited),
a damaged key entry after a rotation, and damaged key-id bytes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from store_helpers import call_ok as _call
from store_helpers import no_env_keyring as _no_env_keyring  # noqa: F401 (autouse)
from store_helpers import session_files as _files
from store_helpers import update_variable
from stuisession import FileStore, ManualClock, Policy, ProtocolHandler
from stuisession.cli.app import main
from stuisession.codec import journal
from stuisession.errors import (
    ConfigurationError,
    IntegrityError,
    SessionNotFound,
    StorageError,
)
from stuisession.keys import Keyring
from stuisession.state import lifecycle
from stuisession.stores.file import hwm
from stuisession.stores.file.layout import session_stem

OPTIONS: dict[str, Any] = {"fsync": False, "lock_stripes": 4}


def _update(h: ProtocolHandler, sid: str, name: str, value: int) -> int:
    revision: int = update_variable(h, sid, name, value)["revision"]
    return revision


def _session(root: Path, *, compact_after: int = 1, updates: int = 4) -> tuple[str, int]:
    """A session with a backup and journal records; returns (id, acknowledged revision)."""
    store = FileStore(root, **OPTIONS)
    h = ProtocolHandler(store, Policy(), clock=ManualClock())
    sid = _call(h, "create_session", client_id="c")["session_id"]
    revision = 1
    for i in range(updates):
        revision = _update(h, sid, f"v{i}", i)
        if i + 1 == compact_after:
            store.load_snapshot(sid)  # compaction: a backup generation
    return sid, revision


def _verify_problems(root: Path) -> list[str]:
    return [p.reason for p in FileStore(root, **OPTIONS).verify()]


def _load_revision(root: Path, sid: str) -> int:
    return FileStore(root, **OPTIONS).load(sid).revision


def _rolled_back(root: Path, sid: str, acknowledged: int) -> IntegrityError:
    with pytest.raises(IntegrityError) as err:
        FileStore(root, **OPTIONS).load(sid)
    assert err.value.details["rolled_back"] is True
    assert err.value.details["acknowledged_revision"] == acknowledged
    return err.value


# -- 1. a flipped length bit is damage, never a torn tail ---------------------------------
def test_flipped_length_bit_is_not_taken_for_a_torn_tail(tmp_path: Path) -> None:
    sid, acked = _session(tmp_path)
    jnl = _files(tmp_path, sid)["journal"]
    data = bytearray(jnl.read_bytes())
    first_len = int.from_bytes(data[journal.HEADER_SIZE : journal.HEADER_SIZE + 4], "big")
    second = journal.HEADER_SIZE + 8 + first_len + 4  # the second record's length prefix
    data[second + 2] ^= 0x10
    jnl.write_bytes(bytes(data))
    assert any("backwards" in r for r in _verify_problems(tmp_path))
    err = _rolled_back(tmp_path, sid, acked)
    assert err.details["found_revision"] < acked
    # settled loudly: the note stays, verify keeps reporting it
    assert any("rolled back" in r for r in _verify_problems(tmp_path))


# -- 6. rollbacks: journal cut, journal deleted, backup over the snapshot ------------------
def test_cut_journal_records_are_reported_as_a_rollback(tmp_path: Path) -> None:
    sid, acked = _session(tmp_path)
    jnl = _files(tmp_path, sid)["journal"]
    records = journal.open_journal(
        FileStore(tmp_path, **OPTIONS).codec,
        jnl.read_bytes(),
        base_tag=journal.snapshot_tag(_files(tmp_path, sid)["snap"].read_bytes()),
        session_id=sid,
    )
    assert records is not None and len(records) == 3
    jnl.write_bytes(jnl.read_bytes()[: records[0].end])  # cut at a record boundary
    problems = _verify_problems(tmp_path)
    assert any(f"acknowledged revision {acked}" in r and "2 acknowledged" in r for r in problems)
    err = _rolled_back(tmp_path, sid, acked)
    assert err.details["found_revision"] == acked - 2
    assert _load_revision(tmp_path, sid) == acked - 2  # the best genuine state, served on


def test_deleted_journal_is_reported_as_a_rollback(tmp_path: Path) -> None:
    sid, acked = _session(tmp_path)
    _files(tmp_path, sid)["journal"].unlink()
    assert any("backwards" in r for r in _verify_problems(tmp_path))
    _rolled_back(tmp_path, sid, acked)


def test_backup_copied_over_the_snapshot_is_reported_as_a_rollback(tmp_path: Path) -> None:
    sid, acked = _session(tmp_path, compact_after=3)
    f = _files(tmp_path, sid)
    shutil.copyfile(f["backup"], f["snap"])
    assert any("backwards" in r for r in _verify_problems(tmp_path))
    _rolled_back(tmp_path, sid, acked)
    assert main(["verify", "--store", str(tmp_path)]) != 0


def test_deleted_high_water_mark_is_reported(tmp_path: Path) -> None:
    sid, acked = _session(tmp_path)
    _files(tmp_path, sid)["hwm"].unlink()
    assert any("mark is missing" in r for r in _verify_problems(tmp_path))
    assert _load_revision(tmp_path, sid) == acked  # nothing was lost: served, and noted
    assert any("rolled back" in r for r in _verify_problems(tmp_path))


def test_torn_append_after_the_acknowledged_records_is_ignored(tmp_path: Path) -> None:
    sid, acked = _session(tmp_path)
    jnl = _files(tmp_path, sid)["journal"]
    with jnl.open("ab") as fh:
        fh.write(b"\x00\x00\x01\x00partial")  # an append that never finished
    assert _verify_problems(tmp_path) == []
    assert _load_revision(tmp_path, sid) == acked


# -- 2. a damaged key entry is named, good snapshots are not quarantined -------------------
def test_damaged_current_key_is_named_and_no_snapshot_is_quarantined(tmp_path: Path) -> None:
    store = FileStore(tmp_path, **OPTIONS)
    key_file = tmp_path / "keyring.json"
    ring = Keyring.load(key_file).rotated("k2")
    ring.save(key_file)
    _session(tmp_path)
    doc = json.loads(key_file.read_text())
    key = bytearray(doc["keys"]["k2"].encode())
    key[5] = ord("A") if key[5] != ord("A") else ord("B")
    doc["keys"]["k2"] = key.decode()
    key_file.write_text(json.dumps(doc))
    with pytest.raises(ConfigurationError, match="key 'k2' is damaged") as err:
        FileStore(tmp_path, **OPTIONS)
    assert str(key_file) in err.value.message
    assert not list((tmp_path / "quarantine").iterdir())
    assert main(["verify", "--store", str(tmp_path)]) != 0
    assert store.path == tmp_path


# -- 3. damaged key-id bytes fall back to the backups --------------------------------------
def test_damaged_key_id_bytes_fall_back_to_the_backup(tmp_path: Path) -> None:
    store = FileStore(tmp_path, **OPTIONS)
    key_id = store.codec.keyring.current_id
    sid, _ = _session(tmp_path)
    snap = _files(tmp_path, sid)["snap"]
    data = bytearray(snap.read_bytes())
    data[18] ^= 0x02  # first key-id byte: still a well-formed id, not in the keyring
    assert data[18 : 18 + len(key_id)].decode() != key_id
    snap.write_bytes(bytes(data))
    problems = [(p.path, p.reason) for p in FileStore(tmp_path, **OPTIONS).verify()]
    assert any(str(path).endswith(".snap") and "key id bytes" in r for path, r in problems)
    _rolled_back(tmp_path, sid, 5)  # the backup is older than acknowledged: loudly
    assert _load_revision(tmp_path, sid) == 1  # the backup: the snapshot before the compaction


# -- 4. a missing keyring.json is never silently replaced ----------------------------------
def test_missing_keyring_is_never_recreated_in_an_existing_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _session(tmp_path)
    (tmp_path / "keyring.json").unlink()
    with pytest.raises(ConfigurationError, match=r"keyring\.json is missing"):
        FileStore(tmp_path, **OPTIONS)
    assert not (tmp_path / "keyring.json").exists()
    assert main(["verify", "--store", str(tmp_path)]) != 0
    assert "keyring.json" in capsys.readouterr().err


# -- 5. format.json: missing, edited, damaged ----------------------------------------------
def test_missing_format_file_is_never_recreated_in_an_existing_store(tmp_path: Path) -> None:
    _session(tmp_path)
    (tmp_path / "format.json").unlink()
    with pytest.raises(ConfigurationError, match=r"format\.json is missing"):
        FileStore(tmp_path, **OPTIONS)
    assert not (tmp_path / "format.json").exists()
    assert main(["verify", "--store", str(tmp_path)]) != 0


def test_edited_format_file_is_detected(tmp_path: Path) -> None:
    _session(tmp_path)
    fmt = tmp_path / "format.json"
    doc = json.loads(fmt.read_text())
    doc["client_shard_key"] = "00" * 16  # would hide every client's sessions
    fmt.write_text(json.dumps(doc))
    with pytest.raises(ConfigurationError, match="mac does not match"):
        FileStore(tmp_path, **OPTIONS)


def test_format_file_of_another_keyring_is_refused(tmp_path: Path) -> None:
    _session(tmp_path)
    with pytest.raises(ConfigurationError, match=r"format\.json"):
        FileStore(tmp_path, keyring=Keyring.generate(), **OPTIONS)


def test_older_format_file_put_back_is_refused(tmp_path: Path) -> None:
    _session(tmp_path)
    fmt = tmp_path / "format.json"
    doc = json.loads(fmt.read_text())
    fmt.write_text(
        json.dumps(
            {k: doc[k] for k in ("format", "lock_stripes", "client_shard_key")} | {"version": 2}
        )
    )
    with pytest.raises(ConfigurationError, match="older copy"):
        FileStore(tmp_path, **OPTIONS)


# -- migration: a version-2 store gets its marks ------------------------------------------
def _as_named_by_id(root: Path, sid: str) -> None:
    """Rename *sid*'s files back to the layout before format 4 (named by the id)."""
    stem = session_stem(root, sid)
    legacy = root / "sessions" / sid[8:10]
    legacy.mkdir(exist_ok=True)
    for path in (root / "sessions").rglob(f"{stem}.*"):
        path.rename(legacy / (sid + path.name[len(stem) :]))


def test_version_2_store_is_migrated_with_marks(tmp_path: Path) -> None:
    sid, acked = _session(tmp_path)
    _files(tmp_path, sid)["hwm"].unlink()
    _as_named_by_id(tmp_path, sid)
    mark = tmp_path / "sessions" / sid[8:10] / f"{sid}.hwm"
    fmt = tmp_path / "format.json"
    doc = json.loads(fmt.read_text())
    fmt.write_text(
        json.dumps(
            {k: doc[k] for k in ("format", "lock_stripes", "client_shard_key")} | {"version": 2}
        )
    )
    store = FileStore(tmp_path, **OPTIONS)
    assert json.loads(fmt.read_text())["version"] == 4  # and renamed (format 4)
    assert not mark.exists()
    mark = _files(tmp_path, sid)["hwm"]
    assert hwm.read(store.codec.keyring, sid, str(mark), fs=store._layout.fs).revision == acked
    assert store.load(sid).revision == acked
    assert _verify_problems(tmp_path) == []


# -- issue 17 item 10 (part): the store directory itself -----------------------------------
def test_world_writable_store_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "store"
    root.mkdir()
    root.chmod(0o777)
    with pytest.raises(ConfigurationError, match="writable by group or others"):
        FileStore(root, **OPTIONS)
    assert not (root / "keyring.json").exists()  # refused before anything is created
    FileStore(root, allow_insecure_directory=True, **OPTIONS)  # the explicit opt-out


def test_symlinked_store_directory_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(ConfigurationError, match="is a symlink"):
        FileStore(link, **OPTIONS)
    assert list(real.iterdir()) == []


# -- issue 17 item 10: planted symlinks are never followed out of the store ---------------
def _outside_state(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def test_planted_symlink_shard_directory_is_not_followed(tmp_path: Path) -> None:
    root, outside = tmp_path / "store", tmp_path / "outside"
    outside.mkdir()
    store = FileStore(root, **OPTIONS)
    s = lifecycle.new_session("alice", now=1e9, timeout=3600)
    store.create(s)
    shard = Path(store._paths(s.session_id).dir)
    # the shard directory is moved outside and replaced by a symlink to it
    shutil.move(shard, outside / shard.name)
    shard.symlink_to(outside / shard.name, target_is_directory=True)
    before = _outside_state(outside)
    assert before  # the session's files are there, to be read or written through the link
    for store_now in (store, FileStore(root, **OPTIONS)):
        with pytest.raises((StorageError, SessionNotFound)):
            store_now.load(s.session_id)
        with pytest.raises((StorageError, SessionNotFound)):
            store_now.save(lifecycle.revise(s), expected=s)
        # a new session whose files belong in that shard
        other = s
        while store_now._paths(other.session_id).dir != str(shard) or other is s:
            other = lifecycle.new_session("bob", now=1e9, timeout=3600)
        with pytest.raises(StorageError):
            store_now.create(other)
        with contextlib.suppress(StorageError):  # refused (ENOTDIR), or found absent
            assert not store_now.delete(s.session_id)
        assert s.session_id not in set(store_now.ids())
        assert _outside_state(outside) == before
    # the store's own files elsewhere are unaffected
    fine = lifecycle.new_session("carol", now=1e9, timeout=3600)
    while store._paths(fine.session_id).dir == str(shard):
        fine = lifecycle.new_session("carol", now=1e9, timeout=3600)
    store.create(fine)
    assert store.load(fine.session_id) == fine


def test_journal_swapped_for_a_symlink_during_compaction_never_touches_outside_files(
    tmp_path: Path,
) -> None:
    root, outside = tmp_path / "store", tmp_path / "outside"
    outside.mkdir()
    sentinel = outside / "sentinel"
    sentinel.write_bytes(b"precious" * 64)
    absent = outside / "never-created"
    before = _outside_state(outside)
    store = FileStore(root, journal_limit=256, backups=1, **OPTIONS)
    h = ProtocolHandler(store, Policy(rate_limit=None), clock=ManualClock())
    sid = _call(h, "create_session", client_id="c")["session_id"]
    shard = Path(store._paths(sid).dir)
    stop = threading.Event()
    swaps = [0]

    def swapper() -> None:
        # swap every journal and temp name for a symlink out of the store, as fast
        # as it can, while updates append, compact and rename over them
        targets = (sentinel, absent)
        while not stop.is_set():
            for name in os.listdir(shard):
                if name.endswith((".jnl", ".tmp")):
                    path = shard / name
                    with contextlib.suppress(OSError):
                        path.unlink()
                        path.symlink_to(targets[swaps[0] % 2])
                        swaps[0] += 1

    t = threading.Thread(target=swapper, daemon=True)
    t.start()
    try:
        for i in range(300):
            changes = {"workspaces": {"default": {"variables": {"i": i, "pad": "x" * 40}}}}
            h.handle(
                {
                    "id": str(i),
                    "command": "update_session_state",
                    "parameters": {"session_id": sid, "changes": changes},
                }
            )
            if i % 10 == 0:
                h.handle(
                    {"id": f"r{i}", "command": "restore_session", "parameters": {"session_id": sid}}
                )
    finally:
        stop.set()
        t.join()
    assert swaps[0] > 0  # the race really ran
    assert _outside_state(outside) == before
    assert not absent.exists() and not absent.is_symlink()

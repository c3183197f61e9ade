"""FileStore: durability, compare-and-swap, backups, recovery, locking, faults."""

from __future__ import annotations

import contextlib
import errno
import json
import multiprocessing
import os
import stat
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import filelock
import pytest

from stuisession._fs import Beneath
from stuisession.codec.snapshot import HEADER_SIZE, MAGIC
from stuisession.errors import (
    ConfigurationError,
    ConflictError,
    IntegrityError,
    SessionNotFound,
    StorageError,
    ValidationError,
)
from stuisession.keys import ENV_KEYRING, Keyring
from stuisession.state import lifecycle
from stuisession.state.model import Session, SessionState
from stuisession.stores import FileStore
from stuisession.stores.file.atomic import read_file

NOW = 1_700_000_000.0


@pytest.fixture(autouse=True)
def _no_env_keyring(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_KEYRING, raising=False)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def store(root: Path) -> Iterator[FileStore]:
    with FileStore(root, keyring=Keyring.generate()) as s:
        yield s


def new(client_id: str = "client-a") -> Session:
    return lifecycle.new_session(client_id, now=NOW, timeout=3600)


def updated(session: Session, **entries: Any) -> Session:
    state = SessionState(session_state={**session.state.session_state, **entries})
    return lifecycle.with_state(session, state, NOW)


def save_next(store: FileStore, session: Session, **entries: Any) -> Session:
    nxt = updated(session, **entries)
    store.save(nxt, expected=session)
    return nxt


def snap(store: FileStore, sid: str, k: int = 0) -> Path:
    p = Path(store._paths(sid).current)
    return p if k == 0 else p.with_name(f"{p.name}.{k}")


def revision_of(store: FileStore, path: Path) -> int:
    return store.codec.open(path.read_bytes()).info.revision


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def history(store: FileStore, revisions: int) -> Session:
    """A session saved up to *revisions* (revision n has session_state {"n": n})."""
    s = new()
    store.create(s)
    for n in range(2, revisions + 1):
        s = save_next(store, s, n=n)
    return s


# -- basics ----------------------------------------------------------------------------
def test_create_load_save_roundtrip(store: FileStore) -> None:
    s = new()
    store.create(s)
    assert store.load(s.session_id) == s
    s2 = save_next(store, s, greeting="héllo", nested={"a": [1, 2, None]})
    loaded = store.load(s.session_id)
    assert loaded == s2
    assert loaded.revision == 2
    assert store.load_info(s.session_id) == s2.info
    assert stat.S_IMODE(snap(store, s.session_id).stat().st_mode) == 0o600


def test_reopened_store_reads_sessions(root: Path) -> None:
    ring = Keyring.generate()
    s = new()
    with FileStore(root, keyring=ring) as a:
        a.create(s)
    with FileStore(root, keyring=ring) as b:
        assert b.load(s.session_id) == s


def test_listing_and_statistics(store: FileStore) -> None:
    a, b, c = new("alice"), new("alice"), new("bob")
    for s in (a, b, c):
        store.create(s)
    assert sorted(store._ids()) == sorted(s.session_id for s in (a, b, c))
    assert {i.session_id for i in store.list_by_client("alice")} == {a.session_id, b.session_id}
    stats = store.statistics(NOW)
    assert (stats.total_sessions, stats.active_sessions, stats.clients) == (3, 3, 2)
    assert len(list(store.iter_expired(NOW + 7200))) == 3


# -- compare-and-swap ------------------------------------------------------------------
def test_stale_expected_record_conflicts(store: FileStore) -> None:
    s = new()
    store.create(s)
    s2 = save_next(store, s, a=1)
    with pytest.raises(ConflictError) as info:
        store.save(updated(s, b=2), expected=s)
    assert info.value.current_revision == 2
    assert store.load(s.session_id) == s2


def test_create_existing_id_conflicts(store: FileStore) -> None:
    s = new()
    store.create(s)
    with pytest.raises(ConflictError) as info:
        store.create(updated(s, x=1))
    assert info.value.current_revision == 1
    assert store.load(s.session_id) == s
    assert temp_files(store.path) == []


def test_save_missing_session_not_found(store: FileStore) -> None:
    s = new()
    with pytest.raises(SessionNotFound):
        store.save(updated(s, a=1), expected=s)
    with pytest.raises(SessionNotFound):
        store.load(s.session_id)
    with pytest.raises(SessionNotFound):
        store.load_info(s.session_id)


def test_delete_removes_current_and_backups(store: FileStore) -> None:
    s = history(store, 4)
    sid = s.session_id
    assert snap(store, sid, 2).exists()
    assert store.delete(sid) is True
    assert list(snap(store, sid).parent.iterdir()) == []
    assert store.delete(sid) is False
    with pytest.raises(SessionNotFound):
        store.load(sid)
    assert list(store._ids()) == []


# -- backups ---------------------------------------------------------------------------
@pytest.mark.parametrize("backups", [0, 1, 2, 3])
def test_backups_keep_last_k_generations(root: Path, backups: int) -> None:
    store = FileStore(root, keyring=Keyring.generate(), backups=backups)
    s = history(store, 6)
    sid = s.session_id
    assert revision_of(store, snap(store, sid)) == 6
    for k in range(1, backups + 1):
        assert revision_of(store, snap(store, sid, k)) == 6 - k
    assert not snap(store, sid, backups + 1).exists()
    # a backup is the previous current file itself (hard link), not a copy
    inode = snap(store, sid).stat().st_ino
    save_next(store, s, n=7)
    if backups:
        assert snap(store, sid, 1).stat().st_ino == inode


# -- corruption and recovery -------------------------------------------------------------
def _flip_middle(b: bytes) -> bytes:
    i = len(b) // 2
    return b[:i] + bytes([b[i] ^ 0xFF]) + b[i + 1 :]


CORRUPTIONS: dict[str, Callable[[bytes], bytes]] = {
    "flip-middle": _flip_middle,
    "flip-last": lambda b: b[:-1] + bytes([b[-1] ^ 0x01]),
    "truncate": lambda b: b[: len(b) // 2],
    "zero-length": lambda b: b"",
    "garbage": lambda b: os.urandom(len(b)),
    "trailing": lambda b: b + b"x",
}


@pytest.mark.parametrize("how", sorted(CORRUPTIONS))
def test_corrupt_current_falls_back_to_newest_backup(
    store: FileStore, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    s = history(store, 3)
    sid = s.session_id
    current = snap(store, sid)
    bad = CORRUPTIONS[how](current.read_bytes())
    current.write_bytes(bad)

    with caplog.at_level("WARNING", logger="stuisession.stores.file"):
        # the read that finds the damage says so: revision 3 was acknowledged
        with pytest.raises(IntegrityError) as lost:
            store.load(sid)
        recovered = store.load(sid)
    assert lost.value.details["rolled_back"] is True
    assert (lost.value.details["acknowledged_revision"], lost.value.details["found_revision"]) == (
        3,
        2,
    )
    assert len(store.rollbacks()) == 1
    assert recovered.revision == 2
    assert recovered.state.session_state == {"n": 2}
    # the bad file is kept in quarantine, byte for byte
    q = store.quarantined()
    assert len(q) == 1
    assert q[0].parent == store.path / "quarantine"
    assert q[0].read_bytes() == bad
    # the good backup became the current file; older backups moved up
    assert revision_of(store, current) == 2
    assert revision_of(store, snap(store, sid, 1)) == 1
    assert not snap(store, sid, 2).exists()
    # a warning, without the session id or contents
    assert any("quarantine" in r.getMessage() for r in caplog.records)
    assert all(sid not in r.getMessage() for r in caplog.records)
    # the store keeps working
    s3 = save_next(store, recovered, again=True)
    assert store.load(sid) == s3
    assert revision_of(store, snap(store, sid, 1)) == 2


def test_corrupt_head_recovers_through_load_info(store: FileStore) -> None:
    s = history(store, 3)
    current = snap(store, s.session_id)
    current.write_bytes(b"\0" * 40 + current.read_bytes()[40:])
    assert store.load_info(s.session_id).revision == 2
    assert len(store.quarantined()) == 1


def test_skips_corrupt_backups(store: FileStore) -> None:
    s = history(store, 4)
    sid = s.session_id
    snap(store, sid).write_bytes(b"garbage")
    snap(store, sid, 1).write_bytes(b"more garbage")
    with pytest.raises(IntegrityError, match="went backwards"):
        store.load(sid)
    assert store.load(sid).revision == 2
    assert len(store.quarantined()) == 2
    # the two bad files and the rollback note
    assert len(list((store.path / "quarantine").iterdir())) == 3
    assert not snap(store, sid, 1).exists()


def test_save_over_corrupt_current_compares_with_backup(store: FileStore) -> None:
    s = history(store, 3)
    sid = s.session_id
    snap(store, sid).write_bytes(b"garbage")
    with pytest.raises(IntegrityError) as info:
        store.save(updated(s, x=1), expected=s)
    assert info.value.details["found_revision"] == 2
    with pytest.raises(ConflictError) as conflict:
        store.save(updated(s, x=1), expected=s)
    assert conflict.value.current_revision == 2
    assert len(store.quarantined()) == 1
    good = store.load(sid)
    assert good.revision == 2
    save_next(store, good, x=1)
    assert store.load(sid).state.session_state == {"n": 2, "x": 1}


def test_everything_corrupt_raises_integrity_error(store: FileStore) -> None:
    s = history(store, 3)
    sid = s.session_id
    files = [snap(store, sid, k) for k in range(3)]
    for f in files:
        f.write_bytes(_flip_middle(f.read_bytes()))
    before = [f.read_bytes() for f in files]
    with pytest.raises(IntegrityError):
        store.load(sid)
    with pytest.raises(IntegrityError):
        store.save(updated(s, x=1), expected=s)
    # nothing was moved or overwritten
    assert [f.read_bytes() for f in files] == before
    assert store.quarantined() == []
    assert list((store.path / "quarantine").iterdir()) == []


def test_unknown_key_is_not_treated_as_corruption(root: Path) -> None:
    old = Keyring.generate("k1")
    a = FileStore(root, keyring=old)
    b = FileStore(root, keyring=old.rotated("k2"))
    s = history(a, 2)
    s3 = save_next(b, s, by="b")  # sealed with k2, which `a` does not know
    with pytest.raises(IntegrityError) as info:
        a.load(s.session_id)
    assert info.value.details.get("key_id") == "k2"
    assert a.quarantined() == []
    assert b.load(s.session_id) == s3


def test_snapshot_of_another_session_is_not_rolled_back(store: FileStore) -> None:
    a, b = history(store, 2), new()
    store.create(b)
    other = snap(store, b.session_id).read_bytes()
    snap(store, a.session_id).write_bytes(other)  # e.g. colliding file names
    with pytest.raises(IntegrityError, match="another session"):
        store.load(a.session_id)
    assert store.quarantined() == []
    assert snap(store, a.session_id).read_bytes() == other


def test_delete_removes_quarantined_copies(store: FileStore) -> None:
    s = history(store, 2)
    snap(store, s.session_id).write_bytes(b"bad")
    with pytest.raises(IntegrityError, match="went backwards"):
        store.load(s.session_id)
    assert len(list((store.path / "quarantine").iterdir())) == 2  # the file and the note
    assert store.delete(s.session_id)
    assert list((store.path / "quarantine").iterdir()) == []


# -- keys and configuration ----------------------------------------------------------------
def test_key_file_created_0600_and_reused(root: Path) -> None:
    s = new()
    with FileStore(root) as a:
        a.create(s)
    key_file = root / "keyring.json"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    with FileStore(root) as b:
        assert b.load(s.session_id) == s


def test_explicit_key_file(tmp_path: Path) -> None:
    key_file = tmp_path / "keys" / "ring.json"
    s = new()
    FileStore(tmp_path / "store", key_file=key_file).create(s)
    assert key_file.exists()
    assert not (tmp_path / "store" / "keyring.json").exists()
    assert FileStore(tmp_path / "store", key_file=key_file).load(s.session_id) == s


def test_world_readable_key_file_refused(tmp_path: Path) -> None:
    key_file = tmp_path / "ring.json"
    Keyring.generate().save(key_file)
    key_file.chmod(0o644)
    with pytest.raises(ConfigurationError, match="chmod 600"):
        FileStore(tmp_path / "store", key_file=key_file)


def test_keyring_from_environment(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ring = Keyring.generate()
    monkeypatch.setenv(ENV_KEYRING, ring.to_json())
    s = new()
    FileStore(root).create(s)
    assert not (root / "keyring.json").exists()
    assert FileStore(root, keyring=ring).load(s.session_id) == s


def test_unencrypted_option(root: Path) -> None:
    store = FileStore(root, keyring=Keyring.generate(), encrypt=False)
    s = new()
    store.create(updated(s, marker="plain-visible"))
    assert store.load(s.session_id).state.session_state == {"marker": "plain-visible"}
    assert not store.codec.encrypt


@pytest.mark.parametrize(
    "kwargs",
    [{"backups": -1}, {"lock_stripes": 0}, {"lock_stripes": 5000}, {"lock_timeout": -1}],
)
def test_invalid_options(root: Path, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        FileStore(root, keyring=Keyring.generate(), **kwargs)


def test_codec_and_keyring_together_refused(root: Path) -> None:
    ring = Keyring.generate()
    from stuisession.codec.snapshot import SnapshotCodec

    with pytest.raises(ConfigurationError):
        FileStore(root, codec=SnapshotCodec(ring), keyring=ring)


def test_lock_striping_is_fixed_per_directory(root: Path) -> None:
    ring = Keyring.generate()
    FileStore(root, keyring=ring, lock_stripes=8)
    # the session stripes (the per-client create locks are separate files)
    stripes = [p for p in (root / "locks").iterdir() if not p.name.startswith("client-")]
    assert len(stripes) == 8
    with pytest.raises(ConfigurationError, match="lock_stripes=8"):
        FileStore(root, keyring=ring)
    FileStore(root, keyring=ring, lock_stripes=8)


def test_bad_format_file_refused(root: Path) -> None:
    root.mkdir()
    (root / "format.json").write_text("{not json")
    with pytest.raises(ConfigurationError):
        FileStore(root, keyring=Keyring.generate())
    (root / "format.json").write_text(json.dumps({"format": "x", "version": 9, "lock_stripes": 64}))
    with pytest.raises(ConfigurationError, match="unsupported"):
        FileStore(root, keyring=Keyring.generate())


# -- ids never reach the file system unchecked ---------------------------------------------------
BAD_IDS = ["../../x", "session_" + "../" * 14 + "x", "session_" + "a" * 42 + "/", "", "session_"]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_traversal_ids_rejected(store: FileStore, tmp_path: Path, bad: str) -> None:
    before = sorted(tmp_path.rglob("*"))
    for call in (store.load, store.load_info, store.delete, store._get, store._get_head):
        with pytest.raises(ValidationError):
            call(bad)
    with pytest.raises(ValidationError):
        store._delete(bad)
    assert sorted(tmp_path.rglob("*")) == before


# -- simulated I/O failures ----------------------------------------------------------------------
def _failing(real: Callable[..., Any], code: int, when: Callable[..., bool]) -> Callable[..., Any]:
    def fake(*args: Any, **kwargs: Any) -> Any:
        if when(*args, **kwargs):
            raise OSError(code, os.strerror(code))
        return real(*args, **kwargs)

    return fake


def _always(*_args: Any, **_kwargs: Any) -> bool:
    return True


FAULTS: dict[str, tuple[str, int, Callable[..., bool]]] = {
    "fsync-enospc": ("fsync", errno.ENOSPC, _always),
    "fsync-eio": ("fsync", errno.EIO, _always),
    "write-enospc": ("write", errno.ENOSPC, _always),
    "replace-eio": ("replace", errno.EIO, _always),
    "final-rename-eio": ("replace", errno.EIO, lambda src, dst, **_: str(dst).endswith(".snap")),
    "link-eio": ("link", errno.EIO, _always),
    "create-erofs": ("open", errno.EROFS, lambda path, flags, *a, **_: bool(flags & os.O_CREAT)),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_write_faults_leave_previous_snapshot(
    store: FileStore, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    name, code, when = FAULTS[fault]
    s = history(store, 3)
    sid = s.session_id
    monkeypatch.setattr(os, name, _failing(getattr(os, name), code, when))
    with pytest.raises(StorageError) as info:
        store.save(updated(s, lost=True), expected=s)
    assert errno.errorcode[code] in info.value.message
    assert info.value.retryable
    monkeypatch.undo()
    assert store.load(sid) == s
    assert temp_files(store.path) == []
    # the fault has cleared: the same write now succeeds
    s4 = save_next(store, s, lost=False)
    assert store.load(sid) == s4


@pytest.mark.parametrize("name", ["fsync", "write", "link"])
def test_create_faults_leave_nothing(
    store: FileStore, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    s = new()
    monkeypatch.setattr(os, name, _failing(getattr(os, name), errno.ENOSPC, _always))
    with pytest.raises(StorageError, match="ENOSPC"):
        store.create(s)
    monkeypatch.undo()
    with pytest.raises(SessionNotFound):
        store.load(s.session_id)
    assert temp_files(store.path) == []
    store.create(s)
    assert store.load(s.session_id) == s


def test_directory_fsync_failure_is_reported(
    store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = history(store, 2)
    calls = {"n": 0}
    real = os.fsync

    def second_fails(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # the file is synced, then its directory
            raise OSError(errno.EIO, "I/O error")
        real(fd)

    monkeypatch.setattr(os, "fsync", second_fails)
    with pytest.raises(StorageError, match="EIO"):
        store.save(updated(s, x=1), expected=s)
    monkeypatch.undo()
    # the rename had happened: whichever snapshot is there is complete
    assert store.load(s.session_id).revision in (2, 3)
    assert temp_files(store.path) == []


def test_read_fault_is_storage_error(store: FileStore, monkeypatch: pytest.MonkeyPatch) -> None:
    s = history(store, 1)
    real = os.open
    monkeypatch.setattr(
        os,
        "open",
        lambda path, flags, *a, **kw: (
            (_ for _ in ()).throw(OSError(errno.EIO, "I/O error"))
            if str(path).endswith(".snap")
            else real(path, flags, *a, **kw)
        ),
    )
    with pytest.raises(StorageError, match="EIO"):
        store.load(s.session_id)
    with pytest.raises(StorageError, match="EIO"):
        store.load_info(s.session_id)


def test_no_fsync_mode_works(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FileStore(root, keyring=Keyring.generate(), fsync=False)
    monkeypatch.setattr(os, "fsync", _failing(os.fsync, errno.EIO, _always))
    s = history(store, 3)
    assert store.load(s.session_id) == s


# -- locking --------------------------------------------------------------------------------------
def test_lock_held_by_another_process_times_out(root: Path) -> None:
    store = FileStore(root, keyring=Keyring.generate(), lock_timeout=0.2)
    s = history(store, 1)
    lock_file = store._locks.file_locks[store._locks.index(s.session_id)].lock_file
    held, done = threading.Event(), threading.Event()

    def holder() -> None:
        # a separate open file description: flock treats it as another process
        other = filelock.FileLock(lock_file, thread_local=False, preserve_lock_file=True)
        with other:
            held.set()
            done.wait(30)

    t = threading.Thread(target=holder)
    t.start()
    try:
        assert held.wait(30)
        with pytest.raises(StorageError, match="lock") as info:
            store.save(updated(s, x=1), expected=s)
        assert info.value.retryable
        with pytest.raises(StorageError, match="lock"):
            store.delete(s.session_id)
        assert store.load(s.session_id) == s  # reads take no lock
    finally:
        done.set()
        t.join(30)
    assert temp_files(root) == []
    save_next(store, s, x=1)


def test_lock_held_by_another_thread_times_out(root: Path) -> None:
    store = FileStore(root, keyring=Keyring.generate(), lock_timeout=0.1)
    s = history(store, 1)
    held, done = threading.Event(), threading.Event()

    def holder() -> None:
        with store._locks.locked(s.session_id):
            held.set()
            done.wait(30)

    t = threading.Thread(target=holder)
    t.start()
    try:
        assert held.wait(30)
        with pytest.raises(StorageError, match="lock"):
            store.save(updated(s, x=1), expected=s)
    finally:
        done.set()
        t.join(30)


def _cas_add_keys(store: FileStore, sid: str, tag: str, n: int) -> int:
    conflicts = 0
    for j in range(n):
        for _attempt in range(10_000):
            cur = store.load(sid)
            try:
                store.save(updated(cur, **{f"{tag}-{j}": j}), expected=cur)
                break
            except ConflictError:
                conflicts += 1
        else:
            raise AssertionError("no progress")
    return conflicts


def test_threads_cas_loops_lose_nothing(root: Path) -> None:
    ring = Keyring.generate()
    stores = [FileStore(root, keyring=ring, lock_timeout=60) for _ in range(2)]
    s = new()
    stores[0].create(s)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            _cas_add_keys(stores[i % 2], s.session_id, f"t{i}", 15)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    final = stores[1].load(s.session_id)
    assert len(final.state.session_state) == 60
    assert final.revision == 61


def _process_worker(root: str, sid: str, tag: str, n: int, barrier: Any) -> None:
    store = FileStore(root, lock_timeout=60)
    barrier.wait(120)
    _cas_add_keys(store, sid, tag, n)


@pytest.mark.e2e
def test_two_processes_cas_loops_lose_nothing(root: Path) -> None:
    store = FileStore(root)  # creates the key file the workers then read
    s = new()
    store.create(s)
    n = 25
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [
        ctx.Process(target=_process_worker, args=(str(root), s.session_id, tag, n, barrier))
        for tag in ("p0", "p1")
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    assert [p.exitcode for p in procs] == [0, 0]
    final = store.load(s.session_id).state.session_state
    for tag in ("p0", "p1"):
        assert sorted(k for k in final if k.startswith(tag + "-")) == sorted(
            f"{tag}-{j}" for j in range(n)
        )
    assert store.load(s.session_id).revision == 1 + 2 * n
    assert temp_files(root) == []


# -- leftovers ------------------------------------------------------------------------------------
def test_leftover_temp_files_ignored_and_swept(root: Path) -> None:
    ring = Keyring.generate()
    store = FileStore(root, keyring=ring)
    s = history(store, 2)
    shard = snap(store, s.session_id).parent
    stale = shard / f".{s.session_id}.0123456789ab.tmp"
    fresh = shard / f".{s.session_id}.ba9876543210.tmp"
    for f in (stale, fresh):
        f.write_bytes(b"half a snapshot")
    os.utime(stale, (1_000_000, 1_000_000))
    (shard / "notes.txt").write_text("stray")
    (shard / "session_short.snap").write_bytes(b"stray")
    other_shard = root / "sessions" / "zz"
    other_shard.mkdir()
    (other_shard / f"{s.session_id}.snap").write_bytes(b"in the wrong shard")

    assert list(store._ids()) == [s.session_id]
    assert store.load(s.session_id) == s
    assert [i.session_id for i in store.iter_infos()] == [s.session_id]

    # a new instance sweeps a directory the first time it writes into it
    again = FileStore(root, keyring=ring)
    save_next(again, s, x=1)
    assert not stale.exists()
    assert fresh.exists()
    assert again.sweep_temp_files(max_age=0) == 1
    assert temp_files(root) == []


def test_head_read_of_large_metadata(tmp_path: Path) -> None:
    # the first read covers typical heads; a larger one is read to its end
    meta_len = 6000
    header = struct.pack(">4sBBHBBII", MAGIC, 1, 1, 1, 2, 0, meta_len, 10)
    blob = header + b"k1" + b"m" * meta_len + b"t" * 32 + b"p" * 10 + b"T" * 32
    f = tmp_path / "big"
    f.write_bytes(blob)
    fs = Beneath(tmp_path)
    head = read_file(str(f), head_only=True, fs=fs)
    assert head == blob[: HEADER_SIZE + 2 + meta_len + 32]
    f.write_bytes(blob[:5000])  # truncated: returned as far as it goes
    assert read_file(str(f), head_only=True, fs=fs) == blob[:5000]
    assert read_file(str(tmp_path / "missing"), head_only=True, fs=fs) is None


# -- planted symlinks (issue 17 item 10) ----------------------------------------------------
def test_planted_symlink_journal_is_never_truncated_through(root: Path, tmp_path: Path) -> None:
    # emptying the journal after a compaction once called truncate(path), which
    # followed a journal swapped for a symlink and emptied a file outside the store
    store = FileStore(root, keyring=Keyring.generate(), fsync=False)
    s = history(store, 1)
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"precious")
    p = store._paths(s.session_id)
    os.symlink(outside, p.journal)
    store._jw.forget_journal(p)
    assert outside.read_bytes() == b"precious"
    assert os.path.islink(p.journal)


# -- issue 16 item 5: session ids are never at rest in clear (file names, logs) ----------
def _secrets_of(result: dict[str, Any]) -> list[str]:
    return [v for k, v in result.items() if k.endswith(("session_id", "token")) and v]


def test_no_session_id_in_clear_anywhere_in_the_store(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from stuisession.policy import Policy
    from stuisession.protocol.handler import ProtocolHandler
    from stuisession.service.core import SessionService

    root = tmp_path / "store"
    store = FileStore(root, keyring=Keyring.generate(), fsync=False, journal_limit=300)
    h = ProtocolHandler(service=SessionService(store, Policy(rate_limit=None)))

    def call(command: str, **params: Any) -> dict[str, Any]:
        reply = h.handle({"id": command, "command": command, "parameters": params})
        assert reply["status"] == "success", reply
        return reply["result"]  # type: ignore[no-any-return]

    secrets: list[str] = []
    sids: list[str] = []
    with caplog.at_level("DEBUG"):
        for client in ("alice", "alice", "bob"):
            created = call("create_session", client_id=client)
            secrets += _secrets_of(created)
            sids.append(created["session_id"])
        for i in range(12):  # past journal_limit: compactions and backups
            for sid in sids:
                changes = {"workspaces": {"default": {"variables": {"i": i}}}}
                call("update_session_state", session_id=sid, changes=changes)
        secrets += _secrets_of(call("restore_session", session_id=sids[0]))
        call("close_session", session_id=sids[2])
        # damage one: it is quarantined (a copy of the file and a log line)
        current = Path(store._paths(sids[1]).current)
        current.write_bytes(b"garbage")
        with contextlib.suppress(IntegrityError):
            store.load(sids[1])
        store.load(sids[1])
        assert store.quarantined()
        assert {i.session_id for i in store.list_by_client("alice")} == set(sids[:2])
        store.close()
    assert sids[0] in secrets and len(secrets) >= 4
    names = [str(p.relative_to(root)) for p in root.rglob("*")]
    assert any(n.endswith(".snap") for n in names) and any("quarantine/" in n for n in names)
    for secret in secrets:
        assert not [n for n in names if secret in n]
        assert not [r for r in caplog.records if secret in r.getMessage()]
    # the contents of every file: snapshots, backups and journals (their records are
    # sealed), quarantined copies, marks, markers, format.json, keyring, locks, notes
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for secret in secrets:
                assert secret.encode() not in data, path.name

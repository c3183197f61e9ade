"""The embedded default store: one sealed snapshot file per session.

:class:`FileStore` composes the parts of this package: :mod:`.layout` (the
on-disk layout and ``format.json``), :mod:`.locking` (stripe locks),
:mod:`.atomic` (durable temp-and-rename writes), :mod:`.cache` (decoded
sessions), :mod:`.journal` (deltas and compaction), :mod:`.commit` (whole-snapshot
writes and deletes), :mod:`.recovery` (backups and quarantine), :mod:`.migrate`
(older store formats) and :mod:`.verify`.

Writes go to a temp file that is fsync'd and renamed over the current file, so
at every instant a complete snapshot is in place; readers take no lock.
Writers serialise per stripe (a ``threading.Lock`` plus an ``flock`` on the
stripe's lock file), which makes compare-and-swap safe across threads and
processes sharing one directory.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from stuisession import _fs
from stuisession.codec.snapshot import Snapshot, SnapshotCodec
from stuisession.errors import (
    ConfigurationError,
    IntegrityError,
    StorageError,
)
from stuisession.ids import check_session_id
from stuisession.keys import Keyring
from stuisession.state.model import Session, SessionInfo
from stuisession.state.updates import StateUpdate
from stuisession.stores.base import (
    AuditAnchors,
    AuditAnchorSource,
    Progress,
    SessionStore,
    VerifyItem,
    VerifyProblem,
    check_successor,
)
from stuisession.stores.file import verify as _verify
from stuisession.stores.file.atomic import STALE_TMP_AGE, FileWriter, read_file
from stuisession.stores.file.cache import DEFAULT_CACHE_BYTES, HeadCache, file_key
from stuisession.stores.file.commit import SnapshotCommits, encode_sized
from stuisession.stores.file.format_file import MAX_STRIPES
from stuisession.stores.file.journal import HeadReader, JournalWriter
from stuisession.stores.file.layout import (
    ClientIndex,
    Layout,
    SessionPaths,
    storage_error,
)
from stuisession.stores.file.locking import StripeLocks
from stuisession.stores.file.migrate import Migration
from stuisession.stores.file.recovery import Recovery, Rollback, session_ref

#: lock files serialising per-client count-and-create across processes
_CLIENT_STRIPES = 16
_T = TypeVar("_T")


def _check_directory(root: Path) -> None:
    """Refuse a store directory that is a symlink or writable by group or others.

    Anyone who can write the directory can swap files for symlinks or replace
    them; a symlinked directory may point where the operator did not mean.
    """
    try:
        st = os.lstat(root)
    except FileNotFoundError:
        return  # created 0700 by make_dirs
    except OSError as exc:
        raise storage_error("inspect the store directory", exc) from exc
    if stat.S_ISLNK(st.st_mode):
        raise ConfigurationError(
            f"the store directory {root} is a symlink; give the real path "
            "(or pass allow_insecure_directory=True)"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigurationError(
            f"the store directory {root} is writable by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):o}); chmod 700 it "
            "(or pass allow_insecure_directory=True)"
        )


def _load_key_file(layout: Layout, path: Path) -> Keyring:
    """The store's key file; created only in a new store, never in an existing one."""
    if not os.path.lexists(path) and layout.is_existing():
        raise ConfigurationError(
            f"key file {path} is missing but the store at {layout.root} already holds "
            "sessions; put the key file back from a backup (or set $STUISESSION_KEYRING): "
            "a new key would leave every session unreadable"
        )
    return Keyring.load_or_create(path)


__all__ = ["DEFAULT_CACHE_BYTES", "STALE_TMP_AGE", "FileStore", "Rollback", "session_ref"]


class FileStore(SessionStore):
    """Sessions as durable, atomically replaced snapshot files in a directory.

    :param path: the store directory (created, mode 0700, if missing).
    :param codec: seals and opens snapshots. Without one, a codec is built
        from *keyring*, else ``$STUISESSION_KEYRING``, else the key file
        *key_file* (default ``<path>/keyring.json``, created 0600 on first use).
    :param encrypt: encrypt states at rest (only used when *codec* is not given).
    :param backups: how many previous generations to keep per session (0 allowed).
    :param lock_stripes: number of lock files; fixed when the directory is
        created, and every process must open it with the same value.
    :param lock_timeout: seconds to wait for a stripe lock before raising
        :class:`~stuisession.errors.StorageError`.
    :param fsync: make every write durable (fsync file and directory). Turn it
        off only for tests and benchmarks: a power loss can then lose writes
        that were acknowledged.
    :param journal: record updates as sealed deltas appended to a per-session
        journal (``<id>.jnl``) instead of rewriting the snapshot, folding them
        into a new snapshot when the journal grows past *journal_limit* bytes
        or a restore needs the stored bytes. Off, every update rewrites the
        snapshot.
    :param journal_limit: journal size (bytes) that triggers compaction; None:
        the snapshot's own size, at least 64 KiB, so replaying costs at most
        about as much as reading the snapshot.
    :param allow_insecure_directory: open a store directory that is a symlink
        or writable by group or others (refused by default with
        :class:`~stuisession.errors.ConfigurationError`).
    :param cache_bytes: bound on the cache of decoded sessions (estimated
        memory, bytes). Cached sessions are revalidated with a ``stat`` of
        their files, so several processes may share the directory. 0 turns
        the cache off. Default 4 MiB (the memory budget); besides the bound
        it keeps the latest session larger than the bound.
    :param make_shards: create the 4,096 shard directories now (about 0.3-1 s
        for a new store, a ``listdir`` afterwards), so that no create pays a
        ``mkdir`` and an extra directory fsync for its client's first session.
        ``serve`` turns it on; test harnesses that make many small stores
        leave it off.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        codec: SnapshotCodec | None = None,
        keyring: Keyring | None = None,
        key_file: str | os.PathLike[str] | None = None,
        encrypt: bool = True,
        backups: int = 2,
        lock_stripes: int = 64,
        lock_timeout: float = 10.0,
        fsync: bool = True,
        journal: bool = True,
        journal_limit: int | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        allow_insecure_directory: bool = False,
        make_shards: bool = False,
    ) -> None:
        if cache_bytes < 0:
            raise ConfigurationError("cache_bytes must be 0 or more")
        if journal_limit is not None and journal_limit < 0:
            raise ConfigurationError("journal_limit must be 0 or more")
        if backups < 0:
            raise ConfigurationError("backups must be 0 or more")
        if not 1 <= lock_stripes <= MAX_STRIPES:
            raise ConfigurationError(f"lock_stripes must be between 1 and {MAX_STRIPES}")
        if lock_timeout < 0:
            raise ConfigurationError("lock_timeout must not be negative")
        if codec is not None and (keyring is not None or key_file is not None):
            raise ConfigurationError("give either a codec or a keyring/key file, not both")
        self._layout = layout = Layout(path)
        self._root = layout.root
        self._backups = backups
        if not allow_insecure_directory:
            _check_directory(layout.root)
        else:  # the operator accepted a symlinked root; nothing below it is followed
            layout.fs = _fs.Beneath(layout.root, follow_root=True)
        layout.make_dirs()
        if codec is None:
            ring = keyring if keyring is not None else Keyring.from_env()
            if ring is None:
                ring = _load_key_file(layout, Path(key_file or layout.keyring_file))
            codec = SnapshotCodec(ring, encrypt=encrypt)
        super().__init__(codec)
        read_info = codec.read_info
        layout.read_info = lambda head: read_info(head).session_id
        fmt = layout.open_format(lock_stripes, fsync=fsync, keyring=codec.keyring)
        if make_shards and fmt.shard_key is not None:
            layout.make_shards(fsync=fsync)  # once per store: creates never mkdir
        self._index = ClientIndex(layout, fmt.shard_key)
        self._locks = StripeLocks(layout.lock_paths(fmt.lock_stripes), lock_timeout)
        # separate files from the session stripes: a create holds its client's
        # lock while it takes its session's stripe, so they must never coincide
        self._client_locks = StripeLocks(
            [
                os.path.join(layout.locks_dir, f"client-{i:02d}.lock")
                for i in range(_CLIENT_STRIPES)
            ],
            lock_timeout,
        )
        self._writer = FileWriter(
            layout.sessions_dir,
            fsync=fsync,
            sweep_age=max(STALE_TMP_AGE, 2 * float(lock_timeout)),
            fs=layout.fs,
        )
        self._journal = journal
        self._cache = HeadCache(cache_bytes)
        self._recovery = Recovery(
            codec,
            layout=layout,
            locks=self._locks,
            cache=self._cache,
            writer=self._writer,
            backups=backups,
        )
        self._reader = HeadReader(codec, self._cache, self._recovery)
        self._jw = JournalWriter(
            codec,
            self._cache,
            self._locks,
            self._reader,
            self._writer,
            backups=backups,
            journal_limit=journal_limit,
            encode=functools.partial(encode_sized, codec),
        )
        self._commits = SnapshotCommits(
            layout, self._locks, self._cache, self._writer, self._reader, self._jw, self._index
        )
        if fmt.migrate:
            Migration(
                codec,
                layout,
                self._locks,
                self._cache,
                self._writer,
                self._reader,
                self._jw,
                self._index,
            ).run(fmt, fsync=fsync)

    # -- public extras --------------------------------------------------------------
    @property
    def path(self) -> Path:
        """The store directory."""
        return self._root

    @property
    def root(self) -> Path:
        """The store's directory."""
        return self._root

    @property
    def local_directory(self) -> Path:
        """The store directory (see :attr:`SessionStore.local_directory`)."""
        return self._root

    @property
    def backups(self) -> int:
        """How many previous generations are kept per session."""
        return self._backups

    def quarantined(self) -> list[Path]:
        """Files this store instance moved to ``quarantine/`` (oldest first)."""
        return self._recovery.quarantined()

    def rollbacks(self) -> list[Rollback]:
        """Sessions this instance served from an older state than acknowledged (oldest first).

        Each was reported (ERROR log, a note in ``quarantine/`` that ``verify``
        reports); a service may hook these, e.g. to audit them or start a new lineage.
        """
        return self._recovery.rollbacks()

    def sweep_temp_files(self, max_age: float = STALE_TMP_AGE) -> int:
        """Delete temp files older than *max_age* seconds left by crashed writers.

        Writes already sweep each shard directory the first time this instance
        writes into it; call this for a full pass (e.g. from a maintenance job).
        Returns how many files were removed.
        """
        shards = self._layout.shards()
        return sum(self._writer.sweep_dir(self._layout.shard_dir(s), max_age) for s in shards)

    def __repr__(self) -> str:
        return f"FileStore({str(self._root)!r}, backups={self._backups})"

    # -- helpers ------------------------------------------------------------------------
    def _paths(self, session_id: str) -> SessionPaths:
        return self._layout.paths(session_id)

    def _io(self, action: str, fn: Callable[[], _T]) -> _T:
        try:
            return fn()
        except OSError as exc:
            raise storage_error(action, exc) from exc

    # -- the client index (see layout.ClientIndex) --------------------------------------
    def client_shard(self, client_id: str) -> str | None:
        """The shard directory holding *client_id*'s sessions (None: a version-1 store)."""
        return self._index.shard(client_id)

    def new_session_id(self, client_id: str) -> str:
        """A fresh session id: 256 random bits, nothing derived from *client_id*.

        The client index is kept by a marker in the client's shard instead
        (written by :meth:`create`), so ids of one client can not be linked.
        """
        return super().new_session_id(client_id)

    def _client_ids(self, client_id: str) -> Iterator[str] | None:
        return self._index.ids(client_id)

    # -- the journal and the decoded-session cache -----------------------------------
    @property
    def cache_size(self) -> int:
        """Estimated bytes held by the decoded-session cache now."""
        return self._cache.used

    def journal_records(self, session_id: str) -> int:
        """How many journal records extend the session's snapshot now."""
        check_session_id(session_id)
        p = self._paths(session_id)
        return self._io("read a session", lambda: self._reader.head(p, decode=False)).records

    def load(self, session_id: str) -> Session:
        """The current session: snapshot plus journal, from the cache when still valid."""
        check_session_id(session_id)
        p = self._paths(session_id)
        head = self._io("read a session", lambda: self._reader.head(p, decode=True))
        assert head.session is not None
        return head.session

    def load_snapshot(self, session_id: str) -> Snapshot:
        """The verified snapshot of the current state, ready to hand over as stored bytes.

        A session with journal records is compacted first (under its lock),
        so the returned snapshot always holds the latest committed state.
        """
        check_session_id(session_id)
        p = self._paths(session_id)
        head = self._io("read a session", lambda: self._reader.head(p, decode=False))
        if head.updates == 0:
            # a fresh Snapshot: the decompressed state it may keep is not the cache's
            return head.snapshot.with_info(head.info)
        try:
            return self._io("compact a session journal", lambda: self._jw.compact(p))
        except StorageError:
            # the state is intact, only folding it into a new snapshot failed (a
            # full disk, a read-only store): seal it in memory and serve that
            current = self.load(session_id)
            blob = self.codec.encode(current)
            return self.codec.open(blob, expected_session_id=session_id)

    def load_info(self, session_id: str) -> SessionInfo:
        """The session's current record (snapshot head plus the last journal record)."""
        check_session_id(session_id)
        p = self._paths(session_id)
        cached = self._cache.get(session_id)
        if (
            cached is not None
            and cached.snap_key == file_key(p.current)
            and cached.jnl_key == file_key(p.journal)
        ):
            return cached.info
        return self._io("read a session record", lambda: self._reader.read_info(p))

    def save(
        self,
        session: Session,
        *,
        expected: SessionInfo,
        max_size: int | None = None,
        update: StateUpdate | None = None,
    ) -> None:
        """Commit *session* if the stored record is still *expected* (see the base class).

        With *update* (the change that turned that revision into *session*) and
        the journal on, the change is appended to the journal; otherwise, or
        when the journal is due for compaction, a new snapshot is written.
        """
        check_session_id(session.session_id)
        check_successor(session, expected)
        if update is None or not self._journal:
            blob = self._encode(session, max_size)
            self._put(session.info, blob, expected)
            return
        p = self._paths(session.session_id)
        payload = update.to_json()
        # a section replaced wholesale by validated client bytes is stored as those bytes
        raw = {k: v for k, v in update.raw.items() if k in update.replace}
        self._io(
            "write a session journal",
            lambda: self._jw.commit(p, session, expected, max_size, payload, raw=raw),
        )

    def save_info(self, snapshot: Snapshot, info: SessionInfo, *, expected: SessionInfo) -> None:
        """Replace only the record (e.g. the access time): a small journal record."""
        check_successor(info, expected)
        if not self._journal:
            super().save_info(snapshot, info, expected=expected)
            return
        p = self._paths(info.session_id)
        self._io(
            "write a session journal",
            lambda: self._jw.commit(p, None, expected, None, None, info=info),
        )

    def _prepare_create(self, session: Session) -> None:
        marker = self._index.marker(session.session_id, session.client_id)
        if marker is not None:
            # before the session exists, so it is never missing from the index
            self._io("write a client index marker", lambda: self._writer.write_marker(marker))

    @contextlib.contextmanager
    def _client_lock(self, client_id: str) -> Iterator[None]:
        # an flock on a per-client lock file: count-and-create is atomic for
        # every process sharing the directory
        key = hashlib.sha256(client_id.encode("utf-8", "surrogatepass")).hexdigest()
        with self._client_locks.locked(key):
            yield

    # -- the store boundary -------------------------------------------------------------
    def read_snapshot(self, session_id: str) -> Snapshot:
        """The verified current snapshot, without side effects (see the base class).

        Changes since the snapshot live in the journal: the current state is
        then sealed in memory (nothing is written).
        """
        snap = super().read_snapshot(session_id)
        if self.journal_records(session_id):
            session = self.load(session_id)
            snap = self.codec.open(self.codec.encode(session), expected_session_id=session_id)
        return snap

    def session_rows(
        self, client_id: str | None = None
    ) -> Iterator[tuple[SessionInfo, int | None]]:
        """As :meth:`SessionStore.session_rows`; the size counts the journal too (a stat)."""
        infos: Iterable[SessionInfo] = (
            self.iter_infos() if client_id is None else self.list_by_client(client_id)
        )
        for info in infos:
            yield info, self._layout.stored_size(self._paths(info.session_id))

    def verify_items(self) -> list[VerifyItem]:
        """Every snapshot and backup file (names only are read), sorted by session."""
        return _verify.verify_items(self._layout)

    def verify(
        self,
        items: Iterable[VerifyItem] | None = None,
        *,
        progress: Progress | None = None,
    ) -> Iterator[VerifyProblem]:
        """Check each file fully, and the journal of each current snapshot; yield the bad ones.

        Hard-linked copies are checked once; files that vanished meanwhile are skipped.
        """
        chosen = self.verify_items() if items is None else items
        return _verify.verify_files(
            self.codec, self._layout, chosen, progress=progress, marks=self._reader.marks
        )

    def anchor_audit(self, source: AuditAnchorSource | None) -> None:
        """Record *source*'s audit position in every high-water mark written from now on
        (:func:`.hwm.choose_anchor`)."""
        self._jw.anchor = self._recovery.anchor = source

    def audit_anchors(self) -> AuditAnchors:
        """The audit anchors of the current sessions' high-water marks (reads only)."""
        return _verify.audit_anchors(self.codec, self._layout)

    # -- primitives -------------------------------------------------------------------
    def _get(self, session_id: str) -> bytes | None:
        p = self._paths(session_id)
        try:
            return read_file(p.current, fs=self._layout.fs)
        except OSError as exc:
            raise storage_error("read a session snapshot", exc) from exc

    def _get_head(self, session_id: str) -> bytes | None:
        p = self._paths(session_id)
        try:
            return read_file(p.current, head_only=True, fs=self._layout.fs)
        except OSError as exc:
            raise storage_error("read a session snapshot", exc) from exc

    def _put(self, info: SessionInfo, blob: bytes, expected: SessionInfo | None) -> None:
        self._commits.put(info, blob, expected)

    def _delete(self, session_id: str, expected: SessionInfo | None = None) -> bool:
        return self._commits.delete(session_id, expected)

    def _ids(self) -> Iterator[str]:
        return self._layout.iter_ids()

    def _recover(self, session_id: str, error: IntegrityError) -> Snapshot:
        return self._recovery.recover(session_id, error)

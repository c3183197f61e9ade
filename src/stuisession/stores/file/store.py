"""The embedded default store: one sealed snapshot file per session.

Layout under the store directory (see ``docs/file-store.md``)::

    format.json                 store format and lock striping (fixed at creation)
    keyring.json                master keys (0600), unless a keyring is given
    locks/NN.lock               a fixed set of striped lock files
    sessions/<ab>/<id>.snap     the current snapshot (<ab>: 2 chars of the id token)
    sessions/<ab>/<id>.snap.1   backups, newest first, up to ``backups``
    sessions/<ab>/.<id>.<rand>.tmp   a write in progress (or left by a crash)
    quarantine/<id>.<time>.<rand>.bad   snapshots that failed their check

Writes go to a temp file that is fsync'd and renamed over the current file, so
at every instant a complete snapshot is in place; readers take no lock.
Writers serialise per stripe (a ``threading.Lock`` plus an ``flock`` on the
stripe's lock file), which makes compare-and-swap safe across threads and
processes sharing one directory.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import attrs
import filelock

from stuisession.codec import journal
from stuisession.codec.snapshot import TAG_SIZE, Snapshot, SnapshotCodec, parse_header
from stuisession.errors import (
    ConfigurationError,
    ConflictError,
    IntegrityError,
    SessionNotFound,
    StorageError,
)
from stuisession.ids import SESSION_ID_PREFIX, check_session_id, is_valid_session_id
from stuisession.keys import Keyring
from stuisession.state.model import Session, SessionInfo
from stuisession.state.updates import StateUpdate
from stuisession.stores.base import SessionStore

log = logging.getLogger("stuisession.stores.file")
_T = TypeVar("_T")

FORMAT_NAME = "stuisession-file-store"
#: version 2 adds client-sharded session ids (the client index); version 1
#: stores are still read and written, listing a client's sessions by a scan
FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)
REF_SUFFIX = ".ref"
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
SNAP_SUFFIX = ".snap"
JOURNAL_SUFFIX = ".jnl"
TMP_SUFFIX = ".tmp"
#: temp files older than this (seconds) belong to a crashed writer
STALE_TMP_AGE = 60.0
#: a first read of this many bytes holds the whole head of a typical snapshot
_HEAD_READ = 4096
_SHARD = slice(len(SESSION_ID_PREFIX), len(SESSION_ID_PREFIX) + 2)
_MAX_STRIPES = 4096

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)


def _errno_name(exc: OSError) -> str:
    if exc.errno is None:
        return type(exc).__name__
    return errno.errorcode.get(exc.errno, str(exc.errno))


def _storage_error(action: str, exc: OSError) -> StorageError:
    # paths hold session ids (bearer secrets): only the errno goes into the message
    name = _errno_name(exc)
    return StorageError(f"file store could not {action}: {name} ({exc.strerror})", errno=name)


def session_ref(session_id: str) -> str:
    """A short, non-reversible reference to a session id, for logs."""
    return hashlib.sha256(session_id.encode("ascii")).hexdigest()[:16]


class _Paths:
    """The file names of one session (the id has been validated)."""

    __slots__ = ("current", "dir", "journal", "sid")

    def __init__(self, sessions_dir: str, session_id: str) -> None:
        self.sid = session_id
        self.dir = os.path.join(sessions_dir, session_id[_SHARD])
        self.current = os.path.join(self.dir, session_id + SNAP_SUFFIX)
        self.journal = os.path.join(self.dir, session_id + JOURNAL_SUFFIX)

    def backup(self, k: int) -> str:
        return f"{self.current}.{k}"


#: default bound of the decoded-session cache (estimated bytes)
DEFAULT_CACHE_BYTES = 64 * 1024 * 1024
#: a decoded state takes about this many times its JSON size in memory (measured
#: with benchmarks/bench_memory.py: attrs objects, dicts and str headers)
_DECODED_FACTOR = 14
_MIN_JOURNAL_LIMIT = 64 * 1024

_FileKey = tuple[int, int, int]


@attrs.frozen
class _Head:
    """What the store knows of one session's files at one moment.

    Valid while ``snap_key``/``jnl_key`` (inode, size, mtime) match the files.
    """

    snap_key: _FileKey
    jnl_key: _FileKey | None
    #: the verified snapshot the journal extends
    snapshot: Snapshot
    base_tag: bytes
    #: tag of the last valid record (the base tag when there is none)
    last_tag: bytes
    #: offset just past the last valid record; 0 when the journal holds no
    #: valid header for this snapshot (absent, empty, or left by a compaction)
    end: int
    records: int
    #: how many of the records change the state (the others only the record)
    updates: int
    info: SessionInfo
    #: the decoded current session, when it has been decoded
    session: Session | None
    #: estimated memory of this entry
    cost: int

    @property
    def journal_bytes(self) -> int:
        return max(0, self.end - journal.HEADER_SIZE)


class _HeadCache:
    """A bounded LRU of :class:`_Head` by session id (thread-safe)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: OrderedDict[str, _Head] = OrderedDict()
        self._used = 0
        self._lock = threading.Lock()

    def get(self, sid: str) -> _Head | None:
        with self._lock:
            head = self._items.get(sid)
            if head is not None:
                self._items.move_to_end(sid)
            return head

    def put(self, sid: str, head: _Head) -> None:
        with self._lock:
            old = self._items.pop(sid, None)
            if old is not None:
                self._used -= old.cost
            if head.cost > self.limit:
                return
            self._items[sid] = head
            self._used += head.cost
            while self._used > self.limit:
                _, evicted = self._items.popitem(last=False)
                self._used -= evicted.cost

    def drop(self, sid: str) -> None:
        with self._lock:
            old = self._items.pop(sid, None)
            if old is not None:
                self._used -= old.cost

    @property
    def used(self) -> int:
        with self._lock:
            return self._used

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


def _decoded_cost(blob_size: int) -> int:
    # a sealed state is compressed about 7x; decoded it takes ~14x its JSON
    return _DECODED_FACTOR * 7 * blob_size


def _file_key(path: str) -> _FileKey | None:
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


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
    :param cache_bytes: bound on the cache of decoded sessions (estimated
        memory, bytes). Cached sessions are revalidated with a ``stat`` of
        their files, so several processes may share the directory. 0 turns
        the cache off.
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
    ) -> None:
        if cache_bytes < 0:
            raise ConfigurationError("cache_bytes must be 0 or more")
        if journal_limit is not None and journal_limit < 0:
            raise ConfigurationError("journal_limit must be 0 or more")
        if backups < 0:
            raise ConfigurationError("backups must be 0 or more")
        if not 1 <= lock_stripes <= _MAX_STRIPES:
            raise ConfigurationError(f"lock_stripes must be between 1 and {_MAX_STRIPES}")
        if lock_timeout < 0:
            raise ConfigurationError("lock_timeout must not be negative")
        if codec is not None and (keyring is not None or key_file is not None):
            raise ConfigurationError("give either a codec or a keyring/key file, not both")
        self._root = Path(path)
        self._backups = backups
        self._lock_timeout = float(lock_timeout)
        self._fsync = fsync
        self._sessions_dir = str(self._root / "sessions")
        self._locks_dir = str(self._root / "locks")
        self._quarantine_dir = str(self._root / "quarantine")
        try:
            for d in (self._root, self._sessions_dir, self._locks_dir, self._quarantine_dir):
                os.makedirs(d, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise _storage_error("create the store directory", exc) from exc
        if codec is None:
            ring = keyring if keyring is not None else Keyring.from_env()
            if ring is None:
                ring = Keyring.load_or_create(key_file or self._root / "keyring.json")
            codec = SnapshotCodec(ring, encrypt=encrypt)
        super().__init__(codec)
        self._stripes = self._check_format(lock_stripes)
        width = max(2, len(str(self._stripes - 1)))
        lock_paths = [
            os.path.join(self._locks_dir, f"{i:0{width}d}.lock") for i in range(self._stripes)
        ]
        self._create_lock_files(lock_paths)
        self._lock_paths = lock_paths
        self._thread_locks = [threading.Lock() for _ in lock_paths]
        # one FileLock per stripe, shared by this process's threads (they are
        # serialised by the thread lock first); the lock file stays in place so
        # no write ever pays for creating one
        self._file_locks: list[filelock.BaseFileLock] = [
            filelock.FileLock(
                p, mode=0o600, thread_local=False, preserve_lock_file=True, poll_interval=0.005
            )
            for p in lock_paths
        ]
        self._swept: set[str] = set()
        self._quarantined: list[Path] = []
        self._meta_lock = threading.Lock()
        self._journal = journal
        self._journal_max = journal_limit
        self._cache = _HeadCache(cache_bytes)

    # -- public extras --------------------------------------------------------------
    @property
    def path(self) -> Path:
        """The store directory."""
        return self._root

    @property
    def backups(self) -> int:
        """How many previous generations are kept per session."""
        return self._backups

    def quarantined(self) -> list[Path]:
        """Files this store instance moved to ``quarantine/`` (oldest first)."""
        with self._meta_lock:
            return list(self._quarantined)

    def sweep_temp_files(self, max_age: float = STALE_TMP_AGE) -> int:
        """Delete temp files older than *max_age* seconds left by crashed writers.

        Writes already sweep each shard directory the first time this instance
        writes into it; call this for a full pass (e.g. from a maintenance job).
        Returns how many files were removed.
        """
        try:
            shards = [e.path for e in os.scandir(self._sessions_dir) if e.is_dir()]
        except OSError as exc:
            raise _storage_error("list the sessions directory", exc) from exc
        return sum(self._sweep_dir(d, max_age) for d in shards)

    def __repr__(self) -> str:
        return f"FileStore({str(self._root)!r}, backups={self._backups})"

    # -- setup ------------------------------------------------------------------------
    def _check_format(self, lock_stripes: int) -> int:
        """Record the striping in ``format.json`` on first use; check it later.

        Processes mapping sessions to stripes differently would not exclude
        each other, so the stripe count is a property of the directory.
        """
        meta = self._root / "format.json"
        doc = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "lock_stripes": lock_stripes,
            # keys the client -> shard map, so a session id reveals nothing of its client
            "client_shard_key": secrets.token_hex(16),
        }
        try:
            if not meta.exists():
                tmp = self._write_temp(str(self._root), "format", json.dumps(doc).encode())
                try:
                    os.link(tmp, meta)  # create-if-absent: the first opener wins
                    self._fsync_dir(str(self._root))
                except FileExistsError:
                    pass
                finally:
                    os.unlink(tmp)
            text = meta.read_text(encoding="utf-8")
        except OSError as exc:
            raise _storage_error("read or create format.json", exc) from exc
        try:
            found = json.loads(text)
            name, version, stripes = found["format"], found["version"], found["lock_stripes"]
        except (ValueError, KeyError, TypeError):
            raise ConfigurationError(f"{meta} is not a valid file store format file") from None
        if name != FORMAT_NAME or version not in _READABLE_VERSIONS:
            raise ConfigurationError(f"{meta}: unsupported store format {name!r} v{version!r}")
        self._shard_key: bytes | None = None
        if version >= 2:
            try:
                self._shard_key = bytes.fromhex(found["client_shard_key"])
            except (KeyError, TypeError, ValueError):
                raise ConfigurationError(f"{meta} has no valid client_shard_key") from None
        if stripes != lock_stripes:
            raise ConfigurationError(
                f"the store at {self._root} uses lock_stripes={stripes}; open it with the "
                "same value (every process sharing a store must stripe locks alike)"
            )
        return lock_stripes

    @staticmethod
    def _create_lock_files(paths: list[str]) -> None:
        try:
            for p in paths:
                if not os.path.exists(p):
                    os.close(os.open(p, os.O_RDWR | os.O_CREAT | _O_CLOEXEC, 0o600))
        except OSError as exc:
            raise _storage_error("create the lock files", exc) from exc

    @property
    def root(self) -> Path:
        """The store's directory."""
        return self._root

    # -- helpers ------------------------------------------------------------------------
    def _paths(self, session_id: str) -> _Paths:
        # the base class validates ids already; never build a path from one that isn't
        if not is_valid_session_id(session_id):
            check_session_id(session_id)
        return _Paths(self._sessions_dir, session_id)

    def _lock_index(self, session_id: str) -> int:
        # crc32, not hash(): it must be the same in every process
        return zlib.crc32(session_id.encode("ascii")) % self._stripes

    @contextlib.contextmanager
    def _locked(self, session_id: str) -> Iterator[None]:
        """Hold the stripe lock of *session_id* (threads, then processes).

        Uncontended, a plain non-blocking ``flock`` on a fresh descriptor takes
        microseconds; only when another process holds the stripe does
        ``filelock`` do the bounded, polling wait.
        """
        i = self._lock_index(session_id)
        deadline = time.monotonic() + self._lock_timeout
        thread_lock = self._thread_locks[i]
        if not thread_lock.acquire(timeout=self._lock_timeout):
            raise self._lock_timeout_error()
        try:
            fd = self._try_flock(i)
            if fd is not None:
                try:
                    yield
                finally:
                    os.close(fd)  # releases the flock
                return
            flock = self._file_locks[i]
            try:
                # timeout 0 is a single attempt; a negative one would wait forever
                flock.acquire(timeout=max(0.0, deadline - time.monotonic()))
            except filelock.Timeout:
                raise self._lock_timeout_error() from None
            except OSError as exc:
                raise _storage_error("acquire a lock file", exc) from exc
            try:
                yield
            finally:
                flock.release()
        finally:
            thread_lock.release()

    def _try_flock(self, i: int) -> int | None:
        """A descriptor holding stripe *i*'s flock, or None if another process holds it."""
        try:
            fd = os.open(self._lock_paths[i], os.O_RDWR | _O_CLOEXEC | _O_NOFOLLOW)
        except OSError as exc:
            raise _storage_error("open a lock file", exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError as exc:
            os.close(fd)
            raise _storage_error("acquire a lock file", exc) from exc
        return fd

    def _lock_timeout_error(self) -> StorageError:
        return StorageError(
            f"file store lock not acquired within {self._lock_timeout:g} s "
            "(another writer holds it or is stuck)",
            reason="lock_timeout",
        )

    def _fsync_dir_committed(self, path: str) -> None:
        """The directory fsync after a change became visible (a rename, link or first append).

        The change is committed by then; if the fsync fails its durability is
        unknown, which the error says (``reason: durability_unknown``) so that a
        resend of the same request is answered, not applied again.
        """
        try:
            self._fsync_dir(path)
        except OSError as exc:
            name = _errno_name(exc)
            raise StorageError(
                f"file store committed a change but could not make it durable: {name} "
                f"({exc.strerror})",
                errno=name,
                reason="durability_unknown",
            ) from exc

    def _fsync_dir(self, path: str) -> None:
        if not self._fsync:
            return
        fd = os.open(path, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _write_temp(self, directory: str, stem: str, data: bytes) -> str:
        """Write *data* to a new, fsync'd temp file in *directory*; return its path.

        Raises OSError; the temp file is removed if anything fails.
        """
        tmp = os.path.join(directory, f".{stem}.{secrets.token_hex(6)}{TMP_SUFFIX}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC, 0o600)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if self._fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return tmp

    def _write_session_temp(self, p: _Paths, blob: bytes) -> str:
        try:
            return self._write_temp(p.dir, p.sid, blob)
        except FileNotFoundError:
            pass
        # first session in this shard: create the directory durably, then retry
        with contextlib.suppress(FileExistsError):
            os.mkdir(p.dir, 0o700)
        self._fsync_dir(self._sessions_dir)
        return self._write_temp(p.dir, p.sid, blob)

    def _discard(self, path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            # the write itself has been decided; a later sweep removes the file
            log.warning("file store: could not remove a temp file: %s", _errno_name(exc))

    def _sweep_dir(self, directory: str, max_age: float) -> int:
        removed = 0
        cutoff = time.time() - max_age
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            return 0
        except OSError as exc:
            log.warning("file store: could not scan for temp files: %s", _errno_name(exc))
            return 0
        for e in entries:
            if not (e.name.startswith(".") and e.name.endswith(TMP_SUFFIX)):
                continue
            try:
                if e.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(e.path)
                    removed += 1
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("file store: could not remove a stale temp file: %s", _errno_name(exc))
        return removed

    def _sweep_once(self, directory: str) -> None:
        # a crashed writer's temp files are cleaned up the first time this
        # instance writes into their directory, so a store never scans everything
        if directory in self._swept:
            return
        self._swept.add(directory)
        self._sweep_dir(directory, max(STALE_TMP_AGE, 2 * self._lock_timeout))

    @staticmethod
    def _read(path: str, head_only: bool = False) -> bytes | None:
        """The file's bytes (or just its snapshot head), None if it does not exist."""
        try:
            fd = os.open(path, os.O_RDONLY | _O_CLOEXEC | _O_NOFOLLOW)
        except FileNotFoundError:
            return None
        if head_only:
            try:
                return FileStore._pread_head(fd)
            finally:
                os.close(fd)
        with os.fdopen(fd, "rb", buffering=0) as f:
            return f.readall()

    @staticmethod
    def _pread_head(fd: int) -> bytes:
        """The snapshot head of the open file *fd*: header, key id, metadata, head tag.

        A malformed or truncated head is returned as it is; ``read_info`` reports it.
        """
        data = os.pread(fd, _HEAD_READ, 0)
        if len(data) < _HEAD_READ:
            return data
        try:
            need = parse_header(data).payload_offset
        except IntegrityError:
            return data
        return os.pread(fd, need, 0) if need > len(data) else data

    # -- the client index -------------------------------------------------------------
    # A version-2 store gives each client's sessions ids whose shard (the two
    # characters after the prefix) is a keyed hash of the client id, so a
    # client's sessions share one shard directory and listing them reads that
    # directory only -- no index file to keep in step, no extra fsync per
    # create. A session stored under an id that does not follow the rule
    # (imported, or created with an id of its own) gets an empty marker
    # ``<id>.ref`` in its client's shard instead.
    def client_shard(self, client_id: str) -> str | None:
        """The shard directory holding *client_id*'s sessions (None: a version-1 store)."""
        if self._shard_key is None:
            return None
        d = hmac.new(self._shard_key, client_id.encode("utf-8", "surrogatepass"), "sha256").digest()
        return _B64[d[0] % 64] + _B64[d[1] % 64]

    def new_session_id(self, client_id: str) -> str:
        """A fresh session id, placed in *client_id*'s shard (256-bit id, 244 bits random)."""
        sid = super().new_session_id(client_id)
        shard = self.client_shard(client_id)
        if shard is None:
            return sid
        return sid[: _SHARD.start] + shard + sid[_SHARD.stop :]

    def _client_ids(self, client_id: str) -> Iterator[str] | None:
        shard = self.client_shard(client_id)
        if shard is None:
            return None
        directory = os.path.join(self._sessions_dir, shard)
        try:
            names = [e.name for e in os.scandir(directory)]
        except FileNotFoundError:
            return iter(())
        except OSError as exc:
            raise _storage_error("list a sessions directory", exc) from exc
        ids = []
        for name in names:
            sid, dot, suffix = name.partition(".")
            if dot and suffix in (SNAP_SUFFIX[1:], REF_SUFFIX[1:]) and is_valid_session_id(sid):
                ids.append(sid)
        return iter(sorted(set(ids)))

    def _marker(self, session_id: str, client_id: str) -> str | None:
        """Path of the index marker a session needs, or None (its id is in the right shard)."""
        shard = self.client_shard(client_id)
        if shard is None or session_id[_SHARD] == shard:
            return None
        return os.path.join(self._sessions_dir, shard, session_id + REF_SUFFIX)

    def _write_marker(self, path: str) -> None:
        directory = os.path.dirname(path)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | _O_CLOEXEC | _O_NOFOLLOW, 0o600)
        except FileNotFoundError:
            with contextlib.suppress(FileExistsError):
                os.mkdir(directory, 0o700)
            self._fsync_dir(self._sessions_dir)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | _O_CLOEXEC | _O_NOFOLLOW, 0o600)
        os.close(fd)
        self._fsync_dir(directory)

    # -- the journal and the decoded-session cache -----------------------------------
    @property
    def cache_size(self) -> int:
        """Estimated bytes held by the decoded-session cache now."""
        return self._cache.used

    def journal_records(self, session_id: str) -> int:
        """How many journal records extend the session's snapshot now."""
        check_session_id(session_id)
        p = self._paths(session_id)
        return self._io("read a session", lambda: self._head(p, decode=False)).records

    def load(self, session_id: str) -> Session:
        """The current session: snapshot plus journal, from the cache when still valid."""
        check_session_id(session_id)
        p = self._paths(session_id)
        head = self._io("read a session", lambda: self._head(p, decode=True))
        assert head.session is not None
        return head.session

    def load_snapshot(self, session_id: str) -> Snapshot:
        """The verified snapshot of the current state, ready to hand over as stored bytes.

        A session with journal records is compacted first (under its lock),
        so the returned snapshot always holds the latest committed state.
        """
        check_session_id(session_id)
        p = self._paths(session_id)
        head = self._io("read a session", lambda: self._head(p, decode=False))
        if head.updates == 0:
            # a fresh Snapshot: the decompressed state it may keep is not the cache's
            return head.snapshot.with_info(head.info)
        try:
            return self._io("compact a session journal", lambda: self._compact(p))
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
            and cached.snap_key == _file_key(p.current)
            and cached.jnl_key == _file_key(p.journal)
        ):
            return cached.info
        return self._io("read a session record", lambda: self._read_info(p))

    def save(
        self,
        session: Session,
        *,
        expected_revision: int,
        max_size: int | None = None,
        update: StateUpdate | None = None,
    ) -> None:
        """Commit *session* if the stored revision is still *expected_revision*.

        With *update* (the change that turned that revision into *session*) and
        the journal on, the change is appended to the journal; otherwise, or
        when the journal is due for compaction, a new snapshot is written.
        """
        check_session_id(session.session_id)
        if update is None or not self._journal:
            blob = self._encode(session, max_size)
            self._put(session.info, blob, expected_revision)
            return
        p = self._paths(session.session_id)
        payload = update.to_json()
        self._io(
            "write a session journal",
            lambda: self._commit(p, session, expected_revision, max_size, payload),
        )

    def save_info(self, snapshot: Snapshot, info: SessionInfo, *, expected_revision: int) -> None:
        """Replace only the record (e.g. the access time): a small journal record."""
        if not self._journal:
            super().save_info(snapshot, info, expected_revision=expected_revision)
            return
        p = self._paths(info.session_id)
        self._io(
            "write a session journal",
            lambda: self._commit(p, None, expected_revision, None, None, info=info),
        )

    def _io(self, action: str, fn: Callable[[], _T]) -> _T:
        try:
            return fn()
        except OSError as exc:
            raise _storage_error(action, exc) from exc

    def _head(self, p: _Paths, *, decode: bool, locked: bool = False) -> _Head:
        """The session's current head, revalidated against its files.

        Without the lock, a compaction may replace the snapshot while we read:
        the snapshot is stat'ed again after the journal has been read, and the
        read is retried if it changed.
        """
        for _ in range(16):
            snap_key = _file_key(p.current)
            if snap_key is None:
                raise SessionNotFound("Session not found")
            jnl_key = _file_key(p.journal)
            cached = self._cache.get(p.sid)
            if cached is not None and cached.snap_key == snap_key:
                if cached.jnl_key == jnl_key and (cached.session is not None or not decode):
                    return cached
                grown = self._catch_up(p, cached, jnl_key, decode)
                if grown is not None:
                    return grown
            head = self._read_head(p, decode=decode, locked=locked)
            if head is not None:
                self._cache.put(p.sid, head)
                return head
        raise StorageError("session files kept changing while being read", reason="busy")

    def _read_head(self, p: _Paths, *, decode: bool, locked: bool) -> _Head | None:
        """Read snapshot and journal from disk (None: they changed meanwhile, retry)."""
        snap_key = _file_key(p.current)
        blob = self._read(p.current)
        if blob is None or snap_key is None:
            raise SessionNotFound("Session not found")
        try:
            snap = self.codec.open(blob, expected_session_id=p.sid)
        except IntegrityError as exc:
            if locked:
                self._restore_locked(p, blob, exc)
            else:
                self._recover(p.sid, exc)
            return None  # the current file was replaced by a backup: read again
        jnl_key = _file_key(p.journal)
        data = self._read(p.journal) or b""
        if _file_key(p.current) != snap_key or _file_key(p.journal) != jnl_key:
            return None
        base_tag = journal.snapshot_tag(blob)
        found = journal.open_journal(self.codec, data, base_tag=base_tag, session_id=p.sid)
        records = found or []
        end = 0
        if found is not None:
            end = records[-1].end if records else journal.HEADER_SIZE
        info = records[-1].info if records else snap.info
        session = None
        cost = len(blob)
        if decode:
            session = journal.replay(snap.session(), records)
            cost += _DECODED_FACTOR * len(snap.state_json())
            snap.forget_state_json()
        return _Head(
            snap_key=snap_key,
            jnl_key=jnl_key,
            snapshot=snap,
            base_tag=base_tag,
            last_tag=records[-1].tag if records else base_tag,
            end=end,
            records=len(records),
            updates=sum(r.kind == journal.KIND_UPDATE for r in records),
            info=info,
            session=session,
            cost=cost,
        )

    def _catch_up(
        self, p: _Paths, cached: _Head, jnl_key: _FileKey | None, decode: bool
    ) -> _Head | None:
        """*cached* plus the records appended since (None: read everything again)."""
        if (
            jnl_key is None
            or cached.end < journal.HEADER_SIZE
            or cached.jnl_key is None
            or jnl_key[0] != cached.jnl_key[0]
            or jnl_key[1] < cached.end
            or (decode and cached.session is None)
        ):
            return None
        fd = os.open(p.journal, os.O_RDONLY | _O_CLOEXEC | _O_NOFOLLOW)
        try:
            st = os.fstat(fd)
            if journal.base_of(os.pread(fd, journal.HEADER_SIZE, 0)) != cached.base_tag:
                return None
            tail = os.pread(fd, st.st_size - cached.end, cached.end)
        finally:
            os.close(fd)
        if (st.st_ino, st.st_size, st.st_mtime_ns) != jnl_key:
            return None
        records = journal.open_records(
            self.codec,
            tail,
            start=0,
            base_tag=cached.base_tag,
            prev_tag=cached.last_tag,
            session_id=p.sid,
        )
        session = cached.session
        if session is not None:
            session = journal.replay(session, records)
        head = attrs.evolve(
            cached,
            jnl_key=jnl_key,
            last_tag=records[-1].tag if records else cached.last_tag,
            end=cached.end + (records[-1].end if records else 0),
            records=cached.records + len(records),
            updates=cached.updates + sum(r.kind == journal.KIND_UPDATE for r in records),
            info=records[-1].info if records else cached.info,
            session=session,
            cost=cached.cost + sum(_DECODED_FACTOR * len(r.payload) for r in records),
        )
        self._cache.put(p.sid, head)
        return head

    def _read_info(self, p: _Paths, *, locked: bool = False) -> SessionInfo:
        """The current record without reading the snapshot's state (listing, sweeps).

        With *locked* (the caller holds the stripe lock) a damaged snapshot is
        reported instead of recovered, which would need the lock.
        """
        for _ in range(16):
            try:
                fd = os.open(p.current, os.O_RDONLY | _O_CLOEXEC | _O_NOFOLLOW)
            except FileNotFoundError:
                raise SessionNotFound("Session not found") from None
            try:
                size = os.fstat(fd).st_size
                head = self._pread_head(fd)
                try:
                    info = self.codec.read_info(head, expected_session_id=p.sid)
                except IntegrityError as exc:
                    if locked:
                        raise
                    return self._recover(p.sid, exc).info
                jnl_key = _file_key(p.journal)
                if jnl_key is None or jnl_key[1] <= journal.HEADER_SIZE:
                    return info
                base_tag = os.pread(fd, TAG_SIZE, max(0, size - TAG_SIZE))
            finally:
                os.close(fd)
            data = self._read(p.journal) or b""
            if _file_key(p.journal) != jnl_key:
                continue  # appended or compacted meanwhile
            records = journal.open_journal(self.codec, data, base_tag=base_tag, session_id=p.sid)
            return records[-1].info if records else info
        raise StorageError("session files kept changing while being read", reason="busy")

    def _journal_limit(self, head: _Head) -> int:
        if self._journal_max is not None:
            return self._journal_max
        return max(_MIN_JOURNAL_LIMIT, len(head.snapshot.blob))

    def _commit(
        self,
        p: _Paths,
        session: Session | None,
        expected_revision: int,
        max_size: int | None,
        payload: bytes | None,
        *,
        info: SessionInfo | None = None,
    ) -> None:
        """Append one record (an update, or with *info* a new record only) as a CAS."""
        with self._locked(p.sid):
            head = self._head(p, decode=False, locked=True)
            if head.info.revision != expected_revision:
                raise ConflictError(
                    "session was changed by another writer", current_revision=head.info.revision
                )
            new_info = session.info if session is not None else info
            assert new_info is not None
            kind = journal.KIND_UPDATE if payload is not None else journal.KIND_INFO
            record = journal.seal(
                self.codec,
                new_info,
                kind=kind,
                base_tag=head.base_tag,
                prev_tag=head.last_tag,
                payload=payload or b"",
            )
            grows = head.journal_bytes + len(record)
            too_big = max_size is not None and len(head.snapshot.blob) + grows > max_size
            if session is not None and (too_big or grows > self._journal_limit(head)):
                # fold everything into a new snapshot; its size is checked exactly
                self._write_snapshot_locked(p, session, self._encode(session, max_size))
                return
            self._append_locked(p, head, record)
            new_session = None
            if session is not None:
                new_session = session
            elif head.session is not None:
                new_session = Session.from_info(new_info, head.session.state)
            extra = _DECODED_FACTOR * len(payload or b"")
            if new_session is not None and head.session is None:
                extra = _decoded_cost(len(head.snapshot.blob))
            self._cache.put(
                p.sid,
                attrs.evolve(
                    head,
                    jnl_key=_file_key(p.journal),
                    last_tag=record[-(TAG_SIZE + 4) : -4],
                    end=(head.end or journal.HEADER_SIZE) + len(record),
                    records=head.records + 1,
                    updates=head.updates + (payload is not None),
                    info=new_info,
                    session=new_session,
                    cost=head.cost + extra,
                ),
            )

    def _append_locked(self, p: _Paths, head: _Head, record: bytes) -> None:
        """Append *record* durably (stripe lock held); cuts off a torn tail first."""
        existed = head.jnl_key is not None
        fd = os.open(
            p.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _O_CLOEXEC | _O_NOFOLLOW, 0o600
        )
        try:
            size = os.fstat(fd).st_size
            data = record
            if head.end == 0:
                # no valid journal for this snapshot yet: start one
                if size:
                    os.ftruncate(fd, 0)
                data = journal.header(head.base_tag) + record
            elif size != head.end:
                os.ftruncate(fd, head.end)  # an unacknowledged, torn append
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if self._fsync:
                os.fdatasync(fd)
        except BaseException:
            # whatever reached the file is not acknowledged: cut it off again
            with contextlib.suppress(OSError):
                os.ftruncate(fd, head.end if head.end else 0)
            raise
        finally:
            os.close(fd)
        if not existed:
            self._fsync_dir_committed(p.dir)

    def _compact(self, p: _Paths) -> Snapshot:
        """Fold the journal into a new snapshot (takes the lock); return it."""
        with self._locked(p.sid):
            head = self._head(p, decode=True, locked=True)
            if head.updates == 0:
                return head.snapshot.with_info(head.info)
            assert head.session is not None
            blob = self.codec.encode(head.session)
            return self._write_snapshot_locked(p, head.session, blob)

    def _write_snapshot_locked(self, p: _Paths, session: Session, blob: bytes) -> Snapshot:
        """Replace the snapshot by *blob* (the state after every journal record)."""
        tmp = self._write_session_temp(p, blob)
        try:
            self._rotate_backups(p)
            os.replace(tmp, p.current)
            self._fsync_dir_committed(p.dir)
        finally:
            self._discard(tmp)  # gone after the rename; removed if it failed
        self._forget_journal(p)
        snap = self.codec.open(blob, expected_session_id=p.sid)
        snap_key = _file_key(p.current)
        if snap_key is not None:
            self._cache.put(
                p.sid,
                _Head(
                    snap_key=snap_key,
                    jnl_key=_file_key(p.journal),
                    snapshot=snap,
                    base_tag=journal.snapshot_tag(blob),
                    last_tag=journal.snapshot_tag(blob),
                    end=0,
                    records=0,
                    updates=0,
                    info=session.info,
                    session=session,
                    cost=len(blob) + _decoded_cost(len(blob)),
                ),
            )
        return snap

    def _forget_journal(self, p: _Paths) -> None:
        """Empty the journal after its snapshot was replaced (the rename is durable).

        Not synced: a journal that survives a crash names the old snapshot and
        is ignored.
        """
        try:
            os.truncate(p.journal, 0)
        except FileNotFoundError:
            pass
        except OSError as exc:
            # the new snapshot is durable already; the journal names the old one
            # and is ignored, and the next append starts it over
            log.warning("file store: could not empty a journal: %s", _errno_name(exc))

    # -- primitives -------------------------------------------------------------------
    def _get(self, session_id: str) -> bytes | None:
        p = self._paths(session_id)
        try:
            return self._read(p.current)
        except OSError as exc:
            raise _storage_error("read a session snapshot", exc) from exc

    def _get_head(self, session_id: str) -> bytes | None:
        p = self._paths(session_id)
        try:
            return self._read(p.current, head_only=True)
        except OSError as exc:
            raise _storage_error("read a session snapshot", exc) from exc

    def _put(self, info: SessionInfo, blob: bytes, expected_revision: int | None) -> None:
        p = self._paths(info.session_id)
        tmp: str | None = None
        try:
            # the slow part (write + fsync) happens before taking the lock
            tmp = self._write_session_temp(p, blob)
            self._sweep_once(p.dir)
            with self._locked(p.sid):
                if expected_revision is None:
                    self._create_locked(p, tmp)
                else:
                    self._replace_locked(p, tmp, expected_revision)
        except OSError as exc:
            raise _storage_error("write a session snapshot", exc) from exc
        finally:
            if tmp is not None:
                self._discard(tmp)

    def create(self, session: Session, *, max_size: int | None = None) -> None:
        """Store a new session (see :meth:`SessionStore.create`)."""
        check_session_id(session.session_id)
        marker = self._marker(session.session_id, session.client_id)
        if marker is not None:
            # before the session exists, so it is never missing from the index
            self._io("write a client index marker", lambda: self._write_marker(marker))
        super().create(session, max_size=max_size)

    def _create_locked(self, p: _Paths, tmp: str) -> None:
        try:
            os.link(tmp, p.current)  # atomic create-if-absent
        except FileExistsError:
            raise ConflictError(
                "session already exists", current_revision=self._head_revision(p)
            ) from None
        self._fsync_dir_committed(p.dir)

    def _head_revision(self, p: _Paths) -> int | None:
        try:
            return self._read_info(p, locked=True).revision
        except (SessionNotFound, IntegrityError):
            return None

    def _replace_locked(self, p: _Paths, tmp: str, expected_revision: int) -> None:
        # the whole snapshot is verified (when not cached), not just its head: a
        # corrupt current file must not be rotated into the backups, pushing out
        # a good generation
        revision = self._head(p, decode=False, locked=True).info.revision
        if revision != expected_revision:
            raise ConflictError("session was changed by another writer", current_revision=revision)
        self._rotate_backups(p)
        os.replace(tmp, p.current)
        self._fsync_dir_committed(p.dir)
        self._forget_journal(p)
        self._cache.drop(p.sid)

    def _rotate_backups(self, p: _Paths) -> None:
        """Shift backups one generation older and hard-link the current file as ``.1``.

        Renames and a link only: no snapshot is copied, and the current file
        stays in place throughout.
        """
        if self._backups == 0:
            return
        for k in range(self._backups - 1, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                os.replace(p.backup(k), p.backup(k + 1))
        first = p.backup(1)
        try:
            os.link(p.current, first)
        except FileExistsError:  # backups=1, or an earlier write failed after linking
            os.unlink(first)
            os.link(p.current, first)

    def _delete(self, session_id: str) -> bool:
        p = self._paths(session_id)
        try:
            with self._locked(session_id):
                existed = os.path.lexists(p.current)
                marker = None
                if existed:
                    with contextlib.suppress(SessionNotFound, IntegrityError):
                        info = self._read_info(p, locked=True)
                        marker = self._marker(session_id, info.client_id)
                self._cache.drop(session_id)
                # backups and journal first: a crash part-way leaves the session
                # in place, never backups without their session
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p.journal)
                for path in self._backup_files(p):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                if existed:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(p.current)
                    self._fsync_dir(p.dir)
                if marker is not None:  # after the session: never a session without it
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(marker)
                # "everything kept for it": set-aside copies go too
                for path in self._quarantine_files(p.sid):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                return existed
        except OSError as exc:
            raise _storage_error("delete a session", exc) from exc

    def _backup_files(self, p: _Paths) -> list[str]:
        # scan instead of counting to `backups`: the option may have been lowered
        prefix = p.sid + SNAP_SUFFIX + "."
        try:
            entries = list(os.scandir(p.dir))
        except FileNotFoundError:
            return []
        return [
            e.path for e in entries if e.name.startswith(prefix) and e.name[len(prefix) :].isdigit()
        ]

    def _quarantine_files(self, session_id: str) -> list[str]:
        prefix = session_id + "."
        return [e.path for e in os.scandir(self._quarantine_dir) if e.name.startswith(prefix)]

    def _ids(self) -> Iterator[str]:
        try:
            shards = sorted(e.name for e in os.scandir(self._sessions_dir) if e.is_dir())
        except OSError as exc:
            raise _storage_error("list the sessions directory", exc) from exc
        for shard in shards:
            try:
                names = [e.name for e in os.scandir(os.path.join(self._sessions_dir, shard))]
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise _storage_error("list a sessions directory", exc) from exc
            for name in names:
                if not name.endswith(SNAP_SUFFIX):
                    continue  # temp files, backups, strays
                sid = name[: -len(SNAP_SUFFIX)]
                if is_valid_session_id(sid) and sid[_SHARD] == shard:
                    yield sid

    # -- recovery ---------------------------------------------------------------------
    def _recover(self, session_id: str, error: IntegrityError) -> Snapshot:
        p = self._paths(session_id)
        try:
            with self._locked(session_id):
                # re-read under the lock: another writer may have replaced or
                # already recovered the file since our unlocked read
                blob = self._read(p.current)
                if blob is None:
                    raise SessionNotFound("Session not found")
                try:
                    return self.codec.open(blob, expected_session_id=session_id)
                except IntegrityError as exc:
                    return self._restore_locked(p, blob, exc)
        except OSError as exc:
            raise _storage_error("recover a session snapshot", exc) from exc

    def _must_not_roll_back(self, blob: bytes) -> bool:
        """True if *blob* failed for a reason other than damage to its bytes.

        A snapshot sealed with a key this keyring lacks (another process has
        rotated keys, or the wrong key file is configured) is a configuration
        problem, and an intact snapshot of another session means the file names
        collide (e.g. a case-insensitive file system): rolling back would
        discard a valid snapshot in both cases.
        """
        try:
            if parse_header(blob).key_id not in self.codec.keyring:
                return True
            self.codec.open(blob)
        except IntegrityError:
            return False
        return True

    def _restore_locked(self, p: _Paths, bad: bytes, error: IntegrityError) -> Snapshot:
        """Replace the corrupt current file by the newest valid backup (stripe lock held).

        The bad file goes to ``quarantine/``; backups that fail their check too
        are quarantined as well. Raises *error* if no backup is valid.
        """
        if self._must_not_roll_back(bad):
            raise error
        self._cache.drop(p.sid)
        found: tuple[int, Snapshot] | None = None
        for k in range(1, self._backups + 1):
            blob = self._read(p.backup(k))
            if blob is None:
                continue
            try:
                found = (k, self.codec.open(blob, expected_session_id=p.sid))
                break
            except IntegrityError:
                continue
        if found is None:
            raise error  # the bad file stays in place: it is all there is
        good, snap = found
        moved = [self._quarantine(p, p.current, "snap", move=False)]
        for k in range(1, good):  # newer backups that failed their check too
            if os.path.lexists(p.backup(k)):
                moved.append(self._quarantine(p, p.backup(k), f"snap.{k}", move=True))
        # one atomic rename swaps the bad current file for the good backup:
        # readers see one or the other, never nothing
        os.replace(p.backup(good), p.current)
        older = [k for k in range(good + 1, self._backups + 1) if os.path.lexists(p.backup(k))]
        for new_k, old_k in enumerate(older, start=1):
            os.replace(p.backup(old_k), p.backup(new_k))
        self._fsync_dir(self._quarantine_dir)
        self._fsync_dir(p.dir)
        with self._meta_lock:
            self._quarantined.extend(moved)
        log.warning(
            "file store: snapshot of session ref %s failed its check (%s); moved %d file(s) "
            "to quarantine and restored backup %d (revision %d)",
            session_ref(p.sid),
            error.message,
            len(moved),
            good,
            snap.info.revision,
        )
        return snap

    def _quarantine(self, p: _Paths, path: str, kind: str, *, move: bool) -> Path:
        """Hard-link *path* into ``quarantine/`` under a unique name (kept for inspection).

        With *move*, the original is removed (backups; the current file is
        replaced by the caller instead, so that it never goes missing).
        """
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        while True:
            name = f"{p.sid}.{stamp}.{secrets.token_hex(4)}.{kind}.bad"
            dst = os.path.join(self._quarantine_dir, name)
            try:
                os.link(path, dst)
            except FileExistsError:
                continue
            if move:
                os.unlink(path)
            return Path(dst)

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
import hashlib
import json
import logging
import os
import secrets
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import filelock

from ..codec import Snapshot, SnapshotCodec, parse_header
from ..errors import (
    ConfigurationError,
    ConflictError,
    IntegrityError,
    SessionNotFound,
    StorageError,
)
from ..ids import SESSION_ID_PREFIX, check_session_id, is_valid_session_id
from ..keys import Keyring
from ..model import SessionInfo
from .base import SessionStore

log = logging.getLogger("stuisession.stores.file")

FORMAT_NAME = "stuisession-file-store"
FORMAT_VERSION = 1
SNAP_SUFFIX = ".snap"
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

    __slots__ = ("current", "dir", "sid")

    def __init__(self, sessions_dir: str, session_id: str) -> None:
        self.sid = session_id
        self.dir = os.path.join(sessions_dir, session_id[_SHARD])
        self.current = os.path.join(self.dir, session_id + SNAP_SUFFIX)

    def backup(self, k: int) -> str:
        return f"{self.current}.{k}"


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
    ) -> None:
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
        doc = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "lock_stripes": lock_stripes}
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
        if name != FORMAT_NAME or version != FORMAT_VERSION:
            raise ConfigurationError(f"{meta}: unsupported store format {name!r} v{version!r}")
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
        """Hold the stripe lock of *session_id* (threads, then processes)."""
        i = self._lock_index(session_id)
        deadline = time.monotonic() + self._lock_timeout
        thread_lock = self._thread_locks[i]
        if not thread_lock.acquire(timeout=self._lock_timeout):
            raise self._lock_timeout_error()
        try:
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

    def _lock_timeout_error(self) -> StorageError:
        return StorageError(
            f"file store lock not acquired within {self._lock_timeout:g} s "
            "(another writer holds it or is stuck)",
            reason="lock_timeout",
        )

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
        with os.fdopen(fd, "rb", buffering=0) as f:
            if not head_only:
                return f.readall()
            data = f.read(_HEAD_READ) or b""
            if len(data) < _HEAD_READ:
                return data
            try:
                h = parse_header(data)
            except IntegrityError:
                return data  # read_info will report it
            need = h.payload_offset  # header, key id, metadata, head tag
            while len(data) < need:
                more = f.read(need - len(data))
                if not more:
                    break  # truncated: read_info will report it
                data += more
            return data

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

    def _create_locked(self, p: _Paths, tmp: str) -> None:
        try:
            os.link(tmp, p.current)  # atomic create-if-absent
        except FileExistsError:
            raise ConflictError(
                "session already exists", current_revision=self._head_revision(p)
            ) from None
        self._fsync_dir(p.dir)

    def _head_revision(self, p: _Paths) -> int | None:
        head = self._read(p.current, head_only=True)
        if head is None:
            return None
        try:
            return self.codec.read_info(head, expected_session_id=p.sid).revision
        except IntegrityError:
            return None

    def _replace_locked(self, p: _Paths, tmp: str, expected_revision: int) -> None:
        current = self._read(p.current)
        if current is None:
            raise SessionNotFound("Session not found")
        try:
            # the whole snapshot is verified, not just its head: a corrupt
            # current file must not be rotated into the backups, pushing out a
            # good generation
            revision = self.codec.open(current, expected_session_id=p.sid).info.revision
        except IntegrityError as exc:
            revision = self._restore_locked(p, current, exc).info.revision
        if revision != expected_revision:
            raise ConflictError("session was changed by another writer", current_revision=revision)
        self._rotate_backups(p)
        os.replace(tmp, p.current)
        self._fsync_dir(p.dir)

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
                # backups first: a crash part-way leaves the session in place,
                # never backups without their session
                for path in self._backup_files(p):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                if existed:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(p.current)
                    self._fsync_dir(p.dir)
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

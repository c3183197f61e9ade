"""The on-disk layout of a file store: the one module that knows it.

Layout under the store directory (see ``docs/file-store.md``)::

    format.json                 store format and lock striping (fixed at creation)
    keyring.json                master keys (0600), unless a keyring is given
    locks/NN.lock               a fixed set of striped lock files
    sessions/<ab>/<n>.snap      the current snapshot (<ab>: the first 2 chars of <n>)
    sessions/<ab>/<n>.snap.1    backups, newest first, up to ``backups``
    sessions/<ab>/<n>.jnl       the journal extending the current snapshot
    sessions/<ab>/<n>.hwm       high-water mark: the acknowledged revision (format 3)
    sessions/<cd>/<n>.ref       client index marker in its client's shard <cd>
    sessions/<ab>/.<n>.<rand>.tmp   a write in progress (or left by a crash)
    quarantine/<n>.<time>.<rand>.bad   snapshots that failed their check

``<n>`` is the session's *file name*: since format 4 a keyed hash of the
session id (:func:`session_name`), so a copy of the directory does not list
live session ids; before, the id itself.

Admin tools read a store's files through these helpers too, never by
rebuilding names themselves.
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import json
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

from stuisession import _fs
from stuisession.codec.snapshot import parse_header
from stuisession.errors import ConfigurationError, StorageError, StuiSessionError
from stuisession.ids import SESSION_ID_PREFIX, check_session_id, is_valid_session_id
from stuisession.keys import Keyring
from stuisession.stores.file.format_file import (
    FORMAT_NAME,
    FORMAT_VERSION,
    StoreFormat,
    parse_format,
    seal_format,
)

#: HKDF purpose of the key that turns session ids into file names
NAME_PURPOSE = "file-store-names"
#: hex characters of a file name (128 bits of HMAC-SHA256)
NAME_CHARS = 32
_HEX = frozenset("0123456789abcdef")
FORMAT_FILE = "format.json"
KEYRING_FILE = "keyring.json"
SNAP_SUFFIX = ".snap"
JOURNAL_SUFFIX = ".jnl"
HWM_SUFFIX = ".hwm"
#: a recovery that served an older state than acknowledged leaves this note in quarantine/
ROLLBACK_SUFFIX = ".rollback.json"
REF_SUFFIX = ".ref"
TMP_SUFFIX = _fs.TMP_SUFFIX
#: the two characters of a session id that name its shard directory
SHARD = slice(len(SESSION_ID_PREFIX), len(SESSION_ID_PREFIX) + 2)
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def errno_name(exc: OSError) -> str:
    """The symbolic errno of *exc* (``"ENOSPC"``), or its type name."""
    if exc.errno is None:
        return type(exc).__name__
    return errno.errorcode.get(exc.errno, str(exc.errno))


def storage_error(action: str, exc: OSError) -> StorageError:
    """A :class:`StorageError` for a failed file operation, naming only the errno."""
    # paths hold session ids (bearer secrets): only the errno goes into the message
    name = errno_name(exc)
    return StorageError(f"file store could not {action}: {name} ({exc.strerror})", errno=name)


def session_name(name_key: bytes, session_id: str) -> str:
    """The file name stem of *session_id* (format 4): HMAC-SHA256 under *name_key*, 32 hex chars.

    Keyed, so that the names in a copy of the store neither are nor reveal
    session ids (which are bearer secrets in compat mode).
    """
    d = hmac.new(name_key, b"stuisession-name\n" + session_id.encode("ascii"), "sha256")
    return d.hexdigest()[:NAME_CHARS]


def is_session_name(name: str) -> bool:
    """True if *name* looks like a format-4 file name stem."""
    return len(name) == NAME_CHARS and _HEX.issuperset(name)


class SessionPaths:
    """The file names of one session (the id has been validated).

    *name* is the stem of every file of the session (the keyed hash of the id
    since format 4, the id itself in older stores); its first two characters
    name the shard directory.
    """

    __slots__ = ("current", "dir", "hwm", "journal", "name", "sid")

    def __init__(self, sessions_dir: str, session_id: str, name: str | None = None) -> None:
        self.sid = session_id
        self.name = stem = session_id if name is None else name
        shard = session_id[SHARD] if name is None else name[:2]
        self.dir = os.path.join(sessions_dir, shard)
        self.current = os.path.join(self.dir, stem + SNAP_SUFFIX)
        self.journal = os.path.join(self.dir, stem + JOURNAL_SUFFIX)
        self.hwm = os.path.join(self.dir, stem + HWM_SUFFIX)

    def backup(self, k: int) -> str:
        """The backup of generation *k* (1 is the newest)."""
        return f"{self.current}.{k}"


class Layout:
    """The directories of one store and the names inside them."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.sessions_dir = str(self.root / "sessions")
        self.locks_dir = str(self.root / "locks")
        self.quarantine_dir = str(self.root / "quarantine")
        self.format_file = self.root / FORMAT_FILE
        self.keyring_file = self.root / KEYRING_FILE
        #: every file operation under the store directory goes through it (no symlinks)
        self.fs = _fs.Beneath(self.root)
        #: keys file names (format 4); None: files are named by session ids
        self.name_key: bytes | None = None
        #: the session id in a snapshot head whose record checks out (set by the store;
        #: raises a StuiSessionError for a bad head)
        self.read_info: Callable[[bytes], str] | None = None

    def set_names(self, fmt: StoreFormat, keyring: Keyring) -> None:
        """Name files as *fmt* says (a keyed hash from format 4 on, else the id)."""
        self.name_key = None if fmt.name_kid is None else keyring.derive(NAME_PURPOSE, fmt.name_kid)

    def name_of(self, session_id: str) -> str:
        """The file name stem of *session_id* (the id itself before format 4)."""
        return session_id if self.name_key is None else session_name(self.name_key, session_id)

    def make_dirs(self) -> None:
        """Create the store's directories (0700) if missing; raises StorageError."""
        try:
            for d in (self.root, self.sessions_dir, self.locks_dir, self.quarantine_dir):
                os.makedirs(d, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise storage_error("create the store directory", exc) from exc

    def make_shards(self, *, fsync: bool) -> None:
        """Create every shard directory once (4,096), so a create never pays for a mkdir
        and a directory fsync of its own; raises StorageError."""
        try:
            present = set(os.listdir(self.sessions_dir))
            missing = [a + b for a in _B64 for b in _B64 if a + b not in present]
            if not missing:
                return
            for shard in missing:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(os.path.join(self.sessions_dir, shard), 0o700)
            if fsync:
                _fs.fsync_dir(self.sessions_dir)
        except OSError as exc:
            raise storage_error("create the shard directories", exc) from exc

    def paths(self, session_id: str) -> SessionPaths:
        """The files of *session_id*; raises ValidationError for a malformed id."""
        # the base class validates ids already; never build a path from one that isn't
        if not is_valid_session_id(session_id):
            check_session_id(session_id)
        if self.name_key is None:
            return SessionPaths(self.sessions_dir, session_id)
        return SessionPaths(self.sessions_dir, session_id, session_name(self.name_key, session_id))

    def legacy_paths(self, session_id: str) -> SessionPaths:
        """The files of *session_id* in a store before format 4 (named by the id)."""
        check_session_id(session_id)
        return SessionPaths(self.sessions_dir, session_id)

    def lock_paths(self, stripes: int) -> list[str]:
        """The lock file of each of *stripes* stripes."""
        width = max(2, len(str(stripes - 1)))
        return [os.path.join(self.locks_dir, f"{i:0{width}d}.lock") for i in range(stripes)]

    def shard_dir(self, shard: str) -> str:
        return os.path.join(self.sessions_dir, shard)

    def marker(self, shard: str, session_id: str) -> str:
        """The client index marker of *session_id* in *shard*."""
        return os.path.join(self.sessions_dir, shard, self.name_of(session_id) + REF_SUFFIX)

    # -- format.json --------------------------------------------------------------------
    def is_existing(self) -> bool:
        """True if the directory already holds a store (a format file or anything in sessions/)."""
        if os.path.lexists(self.format_file):
            return True
        try:
            with os.scandir(self.sessions_dir) as it:
                return any(True for _ in it)
        except FileNotFoundError:
            return False

    def open_format(self, lock_stripes: int, *, fsync: bool, keyring: Keyring) -> StoreFormat:
        """Record the striping in ``format.json`` on first use; check it later.

        Processes mapping sessions to stripes differently would not exclude
        each other, so the stripe count is a property of the directory. The
        file is authenticated with a key derived from *keyring*; it is created
        only in a new, empty store. Raises ConfigurationError (missing in an
        existing store, damaged, edited, foreign or mismatched) or StorageError.
        """
        meta = self.format_file
        try:
            if not os.path.lexists(meta):
                if self.is_existing():
                    raise ConfigurationError(
                        f"{meta} is missing but the store at {self.root} holds sessions; "
                        "restore format.json from a backup of the store (it can not be "
                        "recreated: it holds the key of the client index)"
                    )
                doc = seal_format(
                    keyring,
                    {
                        "format": FORMAT_NAME,
                        "version": FORMAT_VERSION,
                        "lock_stripes": lock_stripes,
                        # keys the client -> shard map (the client index)
                        "client_shard_key": secrets.token_hex(16),
                        "name_kid": keyring.current_id,
                    },
                )
                # create-if-absent: the first opener wins
                with contextlib.suppress(FileExistsError):
                    _fs.atomic_write(meta, json.dumps(doc).encode(), create_only=True, fsync=fsync)
            text = (_fs.read_file(meta) or b"").decode("utf-8", "replace")
        except OSError as exc:
            raise storage_error("read or create format.json", exc) from exc
        fmt = parse_format(meta, text, keyring)
        if not fmt.migrate:
            self.set_names(fmt, keyring)
        if fmt.lock_stripes != lock_stripes:
            raise ConfigurationError(
                f"the store at {self.root} uses lock_stripes={fmt.lock_stripes}; open it with the "
                "same value (every process sharing a store must stripe locks alike)"
            )
        return fmt

    def write_format(self, fmt: StoreFormat, keyring: Keyring, *, fsync: bool) -> None:
        """Rewrite ``format.json`` as the current version (a migration's last step).

        Files are named under ``fmt.name_kid`` (the keyring's current key if None).
        """
        doc = seal_format(
            keyring,
            {
                "format": FORMAT_NAME,
                "version": FORMAT_VERSION,
                "lock_stripes": fmt.lock_stripes,
                "client_shard_key": None if fmt.shard_key is None else fmt.shard_key.hex(),
                "name_kid": fmt.name_kid or keyring.current_id,
            },
        )
        try:
            _fs.atomic_write(self.format_file, json.dumps(doc).encode(), fsync=fsync)
        except OSError as exc:
            raise storage_error("write format.json", exc) from exc

    def has_marks(self) -> bool:
        """True if any session has a high-water-mark file (only stores of version 3+ do)."""
        for shard in self.shards():
            if any(e.name.endswith(HWM_SUFFIX) for e in self._names(shard)):
                return True
        return False

    # -- names -> ids ------------------------------------------------------------------
    def _sid_of(self, stem: str, shard: str | None = None) -> str | None:
        """The session id of the file name stem *stem* (found in *shard*), None if not a session.

        Before format 4 the stem is the id. From format 4 on the id is read from
        the authenticated record of the session's snapshot (or a backup), and
        must hash back to *stem*: a file renamed by hand is not a session.
        """
        if self.name_key is None:
            ok = is_valid_session_id(stem) and (shard is None or stem[SHARD] == shard)
            return stem if ok else None
        if not is_session_name(stem) or (shard is not None and stem[:2] != shard):
            return None
        read_info = self.read_info
        if read_info is None:
            return None
        directory = self.shard_dir(stem[:2])
        for suffix in (SNAP_SUFFIX, *(f"{SNAP_SUFFIX}.{k}" for k in range(1, 100))):
            try:
                head = _read_head(self.fs, os.path.join(directory, stem + suffix))
            except OSError:
                head = None
            if head is None:
                if suffix == SNAP_SUFFIX:
                    continue
                return None  # no more backups
            try:
                sid = read_info(head)
            except StuiSessionError:
                continue  # damaged: try the next generation
            if is_valid_session_id(sid) and hmac.compare_digest(self.name_of(sid), stem):
                return sid
        return None

    # -- listing ------------------------------------------------------------------------
    def shards(self) -> list[str]:
        """Names of the shard directories, sorted; raises StorageError."""
        try:
            return sorted(
                e.name for e in os.scandir(self.sessions_dir) if e.is_dir(follow_symlinks=False)
            )
        except OSError as exc:
            raise storage_error("list the sessions directory", exc) from exc

    def _names(self, shard: str) -> list[os.DirEntry[str]]:
        try:
            return list(os.scandir(self.shard_dir(shard)))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise storage_error("list a sessions directory", exc) from exc

    def iter_stems(self) -> Iterator[tuple[str, str]]:
        """``(shard, stem)`` of every current snapshot file (names only are read)."""
        for shard in self.shards():
            for e in self._names(shard):
                if e.name.endswith(SNAP_SUFFIX):
                    yield shard, e.name[: -len(SNAP_SUFFIX)]

    def iter_ids(self) -> Iterator[str]:
        """Every session id with a current snapshot file (from format 4: read from its record)."""
        for shard, stem in self.iter_stems():
            sid = self._sid_of(stem, shard)
            if sid is not None:
                yield sid

    def iter_legacy_ids(self) -> Iterator[str]:
        """Every session with a snapshot named by its id (a store before format 4)."""
        for shard, stem in self.iter_stems():
            if is_valid_session_id(stem) and stem[SHARD] == shard:
                yield stem

    def ids_in_shard(self, shard: str) -> list[str]:
        """Ids with a marker (or, before format 4, a snapshot) in *shard* (sorted, unique)."""
        ids = set()
        kinds = (
            (REF_SUFFIX[1:],) if self.name_key is not None else (SNAP_SUFFIX[1:], REF_SUFFIX[1:])
        )
        for e in self._names(shard):
            stem, dot, suffix = e.name.partition(".")
            if dot and suffix in kinds:
                sid = self._sid_of(stem)
                if sid is not None:
                    ids.add(sid)
        return sorted(ids)

    def snapshot_files(self) -> list[tuple[str, str, int, tuple[int, int]]]:
        """``(session, path, generation, (dir inode, inode))`` of every snapshot and backup.

        Generation 0 is the current snapshot, N the backup ``<n>.snap.N``.
        *session* is the session id (from format 4 read from the snapshot's
        record, or the file name stem when no generation of it can be read).
        Sorted by session file name, then generation.
        """
        found: list[tuple[str, str, int, tuple[int, int]]] = []
        try:
            shards = sorted(
                (e for e in os.scandir(self.sessions_dir) if e.is_dir(follow_symlinks=False)),
                key=lambda e: e.name,
            )
        except FileNotFoundError:
            return found
        resolved: dict[str, str | None] = {}
        for shard in shards:
            try:
                entries = list(os.scandir(shard.path))
            except FileNotFoundError:
                continue
            for e in entries:
                stem, sep, rest = e.name.partition(SNAP_SUFFIX)
                if not sep:
                    continue
                if self.name_key is None:
                    if not is_valid_session_id(stem) or stem[SHARD] != shard.name:
                        continue  # temp files and strays
                elif not is_session_name(stem) or stem[:2] != shard.name:
                    continue
                if rest == "":
                    generation = 0
                elif rest[:1] == "." and rest[1:].isdigit():
                    generation = int(rest[1:])
                else:
                    continue
                if stem not in resolved:
                    resolved[stem] = self._sid_of(stem, shard.name)
                sid = resolved[stem] or stem
                found.append((sid, e.path, generation, (shard.inode(), e.inode())))
        found.sort(key=lambda f: (f[1].rpartition(SNAP_SUFFIX)[0], f[2]))
        return found

    def backup_files(self, p: SessionPaths) -> list[str]:
        """Every backup file of a session (scanned: ``backups`` may have been lowered)."""
        prefix = p.name + SNAP_SUFFIX + "."
        try:
            entries = list(os.scandir(p.dir))
        except FileNotFoundError:
            return []
        return [
            e.path for e in entries if e.name.startswith(prefix) and e.name[len(prefix) :].isdigit()
        ]

    @staticmethod
    def stored_size(p: SessionPaths) -> int | None:
        """Bytes stored for a session: snapshot plus journal (None: no snapshot)."""
        try:
            size = os.stat(p.current, follow_symlinks=False).st_size
        except FileNotFoundError:
            return None
        with contextlib.suppress(FileNotFoundError):
            size += os.stat(p.journal, follow_symlinks=False).st_size  # not yet compacted
        return size

    def quarantine_files(self, session_id: str, stem: str | None = None) -> list[str]:
        """Files in ``quarantine/`` of *session_id* (named by *stem*, default its file name)."""
        prefix = (stem or self.name_of(session_id)) + "."
        return [e.path for e in os.scandir(self.quarantine_dir) if e.name.startswith(prefix)]

    def rollback_notes(self) -> dict[str, list[str]]:
        """Session file name stem -> paths of its rollback notes in ``quarantine/`` (sorted)."""
        found: dict[str, list[str]] = {}
        try:
            entries = list(os.scandir(self.quarantine_dir))
        except FileNotFoundError:
            return found
        for e in entries:
            stem = e.name.partition(".")[0]
            if e.name.endswith(ROLLBACK_SUFFIX) and (
                is_valid_session_id(stem) or is_session_name(stem)
            ):
                found.setdefault(stem, []).append(e.path)
        for paths in found.values():
            paths.sort()
        return found


def _read_head(fs: _fs.Beneath, path: str) -> bytes | None:
    """The head of the snapshot file *path* (header to head tag), None if absent; OSError."""
    try:
        fd = fs.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        data = os.pread(fd, 4096, 0)
        try:
            need = parse_header(data).payload_offset
        except StuiSessionError:
            return data
        return os.pread(fd, need, 0) if need > len(data) else data
    finally:
        os.close(fd)


class ClientIndex:
    """Which shard holds a client's sessions.

    A version-2 store gives each client's sessions ids whose shard (the two
    characters after the prefix) is a keyed hash of the client id, so a
    client's sessions share one shard directory and listing them reads that
    directory only -- no index file to keep in step, no extra fsync per
    create. A session stored under an id that does not follow the rule
    (imported, or created with an id of its own) gets an empty marker
    ``<id>.ref`` in its client's shard instead.
    """

    def __init__(self, layout: Layout, shard_key: bytes | None) -> None:
        self._layout = layout
        self._key = shard_key

    def shard(self, client_id: str) -> str | None:
        """The shard of *client_id*'s sessions (None: a version-1 store, no index)."""
        return None if self._key is None else client_shard(self._key, client_id)

    def place(self, session_id: str, client_id: str) -> str:
        """*session_id* moved into *client_id*'s shard."""
        shard = self.shard(client_id)
        if shard is None:
            return session_id
        return session_id[: SHARD.start] + shard + session_id[SHARD.stop :]

    def ids(self, client_id: str) -> Iterator[str] | None:
        """The ids in *client_id*'s shard (snapshots and markers), None without an index."""
        shard = self.shard(client_id)
        return None if shard is None else iter(self._layout.ids_in_shard(shard))

    def marker(self, session_id: str, client_id: str) -> str | None:
        """Path of the index marker a session needs, or None (its id is in the right shard)."""
        shard = self.shard(client_id)
        if shard is None or (self._layout.name_key is None and session_id[SHARD] == shard):
            return None  # from format 4 every session has one: names are not placed
        return self._layout.marker(shard, session_id)


def journal_path(snapshot_path: str) -> str:
    """The journal next to the current snapshot file *snapshot_path*."""
    return snapshot_path[: -len(SNAP_SUFFIX)] + JOURNAL_SUFFIX


def client_shard(shard_key: bytes, client_id: str) -> str:
    """The shard (two id characters) of *client_id*'s sessions under *shard_key*."""
    d = hmac.new(shard_key, client_id.encode("utf-8", "surrogatepass"), "sha256").digest()
    return _B64[d[0] % 64] + _B64[d[1] % 64]


def recorded_lock_stripes(directory: str | os.PathLike[str]) -> int | None:
    """The lock striping recorded in an existing store at *directory* (None if unreadable)."""
    try:
        doc = json.loads((_fs.read_file(Path(directory) / FORMAT_FILE) or b"").decode())
    except (OSError, ValueError):
        return None
    stripes = doc.get("lock_stripes") if isinstance(doc, dict) else None
    return stripes if isinstance(stripes, int) and not isinstance(stripes, bool) else None


def session_stem(
    directory: str | os.PathLike[str], session_id: str, keyring: Keyring | None = None
) -> str:
    """The file name stem of *session_id* in the store at *directory* (admin tools, tests).

    From format 4 the keyed hash of the id, with the key from *keyring*, else
    ``$STUISESSION_KEYRING``, else the store's ``keyring.json``; before, the id.
    The shard directory is ``sessions/<stem[:2]>`` (``sessions/<id[8:10]>``
    before format 4). Raises ConfigurationError (no usable format.json or key).
    """
    root = Path(directory)
    check_session_id(session_id)
    try:
        doc = json.loads((_fs.read_file(root / FORMAT_FILE) or b"").decode())
        name_kid = doc.get("name_kid") if doc.get("version", 0) >= 4 else None
    except (OSError, ValueError, AttributeError, TypeError):
        raise ConfigurationError(f"{root / FORMAT_FILE} is missing or unreadable") from None
    if name_kid is None:
        return session_id
    ring = keyring or Keyring.from_env() or Keyring.load(root / KEYRING_FILE)
    return session_name(ring.derive(NAME_PURPOSE, name_kid), session_id)

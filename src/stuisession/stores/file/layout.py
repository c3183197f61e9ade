"""The on-disk layout of a file store: the one module that knows it.

Layout under the store directory (see ``docs/file-store.md``)::

    format.json                 store format and lock striping (fixed at creation)
    keyring.json                master keys (0600), unless a keyring is given
    locks/NN.lock               a fixed set of striped lock files
    sessions/<ab>/<id>.snap     the current snapshot (<ab>: 2 chars of the id token)
    sessions/<ab>/<id>.snap.1   backups, newest first, up to ``backups``
    sessions/<ab>/<id>.jnl      the journal extending the current snapshot
    sessions/<ab>/<id>.hwm      high-water mark: the acknowledged revision (format 3)
    sessions/<ab>/<id>.ref      client index marker (an id outside its client's shard)
    sessions/<ab>/.<id>.<rand>.tmp   a write in progress (or left by a crash)
    quarantine/<id>.<time>.<rand>.bad   snapshots that failed their check

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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

from stuisession import _fs
from stuisession.errors import ConfigurationError, StorageError
from stuisession.ids import SESSION_ID_PREFIX, check_session_id, is_valid_session_id
from stuisession.keys import Keyring

FORMAT_NAME = "stuisession-file-store"
#: version 2 adds client-sharded session ids (the client index); version 3
#: authenticates format.json and keeps a high-water mark per session. Stores
#: of versions 1 and 2 are migrated to 3 when opened (a v1 store keeps listing
#: a client's sessions by a scan)
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
_FORMAT_PURPOSE = "file-store-format"
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
MAX_STRIPES = 4096
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


class SessionPaths:
    """The file names of one session (the id has been validated)."""

    __slots__ = ("current", "dir", "hwm", "journal", "sid")

    def __init__(self, sessions_dir: str, session_id: str) -> None:
        self.sid = session_id
        self.dir = os.path.join(sessions_dir, session_id[SHARD])
        self.current = os.path.join(self.dir, session_id + SNAP_SUFFIX)
        self.journal = os.path.join(self.dir, session_id + JOURNAL_SUFFIX)
        self.hwm = os.path.join(self.dir, session_id + HWM_SUFFIX)

    def backup(self, k: int) -> str:
        """The backup of generation *k* (1 is the newest)."""
        return f"{self.current}.{k}"


@attrs.frozen
class StoreFormat:
    """What ``format.json`` records."""

    version: int
    lock_stripes: int
    #: keys the client -> shard map (None: a version-1 store)
    shard_key: bytes | None
    #: the file must be rewritten as version 3 (with high-water marks written first)
    migrate: bool = False


class Layout:
    """The directories of one store and the names inside them."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.sessions_dir = str(self.root / "sessions")
        self.locks_dir = str(self.root / "locks")
        self.quarantine_dir = str(self.root / "quarantine")
        self.format_file = self.root / FORMAT_FILE
        self.keyring_file = self.root / KEYRING_FILE

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
        return SessionPaths(self.sessions_dir, session_id)

    def lock_paths(self, stripes: int) -> list[str]:
        """The lock file of each of *stripes* stripes."""
        width = max(2, len(str(stripes - 1)))
        return [os.path.join(self.locks_dir, f"{i:0{width}d}.lock") for i in range(stripes)]

    def shard_dir(self, shard: str) -> str:
        return os.path.join(self.sessions_dir, shard)

    def marker(self, shard: str, session_id: str) -> str:
        """The client index marker of *session_id* in *shard*."""
        return os.path.join(self.sessions_dir, shard, session_id + REF_SUFFIX)

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
                    },
                )
                # create-if-absent: the first opener wins
                with contextlib.suppress(FileExistsError):
                    _fs.atomic_write(meta, json.dumps(doc).encode(), create_only=True, fsync=fsync)
            text = (_fs.read_file(meta) or b"").decode("utf-8", "replace")
        except OSError as exc:
            raise storage_error("read or create format.json", exc) from exc
        fmt = parse_format(meta, text, keyring)
        if fmt.lock_stripes != lock_stripes:
            raise ConfigurationError(
                f"the store at {self.root} uses lock_stripes={fmt.lock_stripes}; open it with the "
                "same value (every process sharing a store must stripe locks alike)"
            )
        return fmt

    def write_format(self, fmt: StoreFormat, keyring: Keyring, *, fsync: bool) -> None:
        """Rewrite ``format.json`` as the current version (a migration's last step)."""
        doc = seal_format(
            keyring,
            {
                "format": FORMAT_NAME,
                "version": FORMAT_VERSION,
                "lock_stripes": fmt.lock_stripes,
                "client_shard_key": None if fmt.shard_key is None else fmt.shard_key.hex(),
            },
        )
        try:
            _fs.atomic_write(self.format_file, json.dumps(doc).encode(), fsync=fsync)
        except OSError as exc:
            raise storage_error("write format.json", exc) from exc

    def has_marks(self) -> bool:
        """True if any session has a high-water-mark file (only stores of version 3 do)."""
        for shard in self.shards():
            if any(e.name.endswith(HWM_SUFFIX) for e in self._names(shard)):
                return True
        return False

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

    def iter_ids(self) -> Iterator[str]:
        """Every session id with a current snapshot file."""
        for shard in self.shards():
            for e in self._names(shard):
                if not e.name.endswith(SNAP_SUFFIX):
                    continue  # temp files, backups, strays
                sid = e.name[: -len(SNAP_SUFFIX)]
                if is_valid_session_id(sid) and sid[SHARD] == shard:
                    yield sid

    def ids_in_shard(self, shard: str) -> list[str]:
        """Ids with a snapshot or a marker in *shard* (sorted, unique)."""
        ids = set()
        for e in self._names(shard):
            sid, dot, suffix = e.name.partition(".")
            if dot and suffix in (SNAP_SUFFIX[1:], REF_SUFFIX[1:]) and is_valid_session_id(sid):
                ids.add(sid)
        return sorted(ids)

    def snapshot_files(self) -> list[tuple[str, str, int, tuple[int, int]]]:
        """``(session_id, path, generation, (dir inode, inode))`` of every snapshot and backup.

        Generation 0 is the current snapshot, N the backup ``<id>.snap.N``.
        Names only are read; sorted by session, then generation.
        """
        found: list[tuple[str, str, int, tuple[int, int]]] = []
        try:
            shards = sorted(
                (e for e in os.scandir(self.sessions_dir) if e.is_dir(follow_symlinks=False)),
                key=lambda e: e.name,
            )
        except FileNotFoundError:
            return found
        for shard in shards:
            try:
                entries = list(os.scandir(shard.path))
            except FileNotFoundError:
                continue
            for e in entries:
                sid, sep, rest = e.name.partition(SNAP_SUFFIX)
                if not sep or not is_valid_session_id(sid) or sid[SHARD] != shard.name:
                    continue  # temp files and strays
                if rest == "":
                    generation = 0
                elif rest[:1] == "." and rest[1:].isdigit():
                    generation = int(rest[1:])
                else:
                    continue
                found.append((sid, e.path, generation, (shard.inode(), e.inode())))
        found.sort(key=lambda f: (f[1].rpartition(SNAP_SUFFIX)[0], f[2]))
        return found

    def backup_files(self, p: SessionPaths) -> list[str]:
        """Every backup file of a session (scanned: ``backups`` may have been lowered)."""
        prefix = p.sid + SNAP_SUFFIX + "."
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

    def quarantine_files(self, session_id: str) -> list[str]:
        prefix = session_id + "."
        return [e.path for e in os.scandir(self.quarantine_dir) if e.name.startswith(prefix)]

    def rollback_notes(self) -> dict[str, list[str]]:
        """Session id -> paths of the rollback notes in ``quarantine/`` (sorted)."""
        found: dict[str, list[str]] = {}
        try:
            entries = list(os.scandir(self.quarantine_dir))
        except FileNotFoundError:
            return found
        for e in entries:
            sid = e.name.partition(".")[0]
            if e.name.endswith(ROLLBACK_SUFFIX) and is_valid_session_id(sid):
                found.setdefault(sid, []).append(e.path)
        for paths in found.values():
            paths.sort()
        return found


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
        if shard is None or session_id[SHARD] == shard:
            return None
        return self._layout.marker(shard, session_id)


def journal_path(snapshot_path: str) -> str:
    """The journal next to the current snapshot file *snapshot_path*."""
    return snapshot_path[: -len(SNAP_SUFFIX)] + JOURNAL_SUFFIX


def client_shard(shard_key: bytes, client_id: str) -> str:
    """The shard (two id characters) of *client_id*'s sessions under *shard_key*."""
    d = hmac.new(shard_key, client_id.encode("utf-8", "surrogatepass"), "sha256").digest()
    return _B64[d[0] % 64] + _B64[d[1] % 64]


def _format_mac(keyring: Keyring, key_id: str, body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    key = keyring.derive(_FORMAT_PURPOSE, key_id)
    return hmac.new(key, b"stuisession-format\n" + canonical, "sha256").hexdigest()


def seal_format(keyring: Keyring, body: dict[str, Any]) -> dict[str, Any]:
    """*body* with ``kid`` and ``mac`` added (format version 3)."""
    doc = dict(body, kid=keyring.current_id)
    doc["mac"] = _format_mac(keyring, keyring.current_id, doc)
    return doc


def parse_format(meta: Path, text: str, keyring: Keyring) -> StoreFormat:
    """The checked content of format.json (ConfigurationError naming *meta*)."""
    restore = "; restore it from a backup of the store"
    try:
        found = json.loads(text)
        name, version, stripes = found["format"], found["version"], found["lock_stripes"]
    except (ValueError, KeyError, TypeError):
        raise ConfigurationError(f"{meta} is not a valid file store format file{restore}") from None
    if name != FORMAT_NAME or version not in READABLE_VERSIONS or type(version) is not int:
        raise ConfigurationError(f"{meta}: unsupported store format {name!r} v{version!r}")
    if version >= 3:
        kid, mac = found.get("kid"), found.get("mac")
        if not isinstance(kid, str) or not isinstance(mac, str) or kid not in keyring:
            raise ConfigurationError(
                f"{meta} is damaged, or sealed with a key that is not in this keyring "
                f"(wrong keyring?){restore}"
            )
        body = {k: v for k, v in found.items() if k != "mac"}
        expected = _format_mac(keyring, kid, body)
        if not hmac.compare_digest(expected.encode(), mac.encode("utf-8", "replace")):
            raise ConfigurationError(
                f"{meta} is damaged or was edited (its mac does not match){restore}"
            )
    if type(stripes) is not int or not 1 <= stripes <= MAX_STRIPES:
        raise ConfigurationError(f"{meta} has an invalid lock_stripes{restore}")
    shard_key: bytes | None = None
    raw_key = found.get("client_shard_key")
    if version >= 2 and (version == 2 or raw_key is not None):
        try:
            shard_key = bytes.fromhex(raw_key)
        except (KeyError, TypeError, ValueError):
            raise ConfigurationError(f"{meta} has no valid client_shard_key{restore}") from None
    return StoreFormat(
        version=version, lock_stripes=stripes, shard_key=shard_key, migrate=version < FORMAT_VERSION
    )


def recorded_lock_stripes(directory: str | os.PathLike[str]) -> int | None:
    """The lock striping recorded in an existing store at *directory* (None if unreadable)."""
    try:
        doc = json.loads((_fs.read_file(Path(directory) / FORMAT_FILE) or b"").decode())
    except (OSError, ValueError):
        return None
    stripes = doc.get("lock_stripes") if isinstance(doc, dict) else None
    return stripes if isinstance(stripes, int) and not isinstance(stripes, bool) else None

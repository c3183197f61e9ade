"""Administrative operations on a store: key rotation, verification, export/import.

These are library functions; the ``stuisession`` CLI is a thin layer over them.
Each works session by session with compare-and-swap, so it can run while a
bridge serves the same store, and an interruption (Ctrl-C) leaves every
session either fully processed or untouched.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import attrs

from stuisession.codec import journal
from stuisession.codec.snapshot import FLAG_ENCRYPTED, Snapshot, SnapshotCodec, parse_header
from stuisession.errors import (
    ConfigurationError,
    ConflictError,
    IntegrityError,
    SessionNotFound,
    StuiSessionError,
)
from stuisession.ids import SESSION_ID_PREFIX, check_client_id, is_valid_session_id
from stuisession.keys import Keyring
from stuisession.security.audit import AuditLog
from stuisession.state.model import SessionInfo, SessionStatus
from stuisession.state.schema import to_wire
from stuisession.stores.base import SessionStore
from stuisession.stores.file.store import FileStore
from stuisession.stores.redis import RedisStore

Progress = Callable[[int], None]


@attrs.frozen
class RotationReport:
    """What a key rotation did."""

    new_key_id: str
    resealed: int
    skipped: int
    failed: list[str]


def rotate_keys(
    store: SessionStore,
    *,
    key_file: str | os.PathLike[str] | None = None,
    audit: AuditLog | None = None,
    progress: Progress | None = None,
) -> RotationReport:
    """Add a new current key and re-seal every stored session with it.

    The new keyring is written to *key_file* (0600) before any session is
    re-sealed, so a crash midway leaves sessions readable under either key.
    Old keys stay in the keyring to read backups and older audit lines.
    """
    ring = store.codec.keyring.rotated()
    if key_file is not None:
        ring.save(key_file)
    store.codec.keyring = ring
    if audit is not None:
        audit.keyring = ring
        audit.record("key_rotation", reason=f"new key {ring.current_id}")
    resealed = skipped = 0
    failed: list[str] = []
    for i, sid in enumerate(list(store._ids()), 1):  # noqa: SLF001  # TODO boundary
        try:
            stored = store._get(sid)  # noqa: SLF001  # TODO boundary
            sealed_with = None if stored is None else parse_header(stored).key_id
            snap = store.load_snapshot(sid)  # may compact a journal, sealing with the new key
            if snap.header.key_id == ring.current_id:
                if sealed_with == ring.current_id:
                    skipped += 1
                else:
                    resealed += 1
            else:
                for _ in range(8):
                    try:
                        session = snap.session()
                        store.save(session, expected_revision=session.revision)
                        resealed += 1
                        break
                    except ConflictError:
                        snap = store.load_snapshot(sid)
                else:
                    failed.append(sid)
        except SessionNotFound:
            skipped += 1  # deleted meanwhile
        except StuiSessionError:
            failed.append(sid)
        if progress is not None:
            progress(i)
    return RotationReport(ring.current_id, resealed, skipped, failed)


@attrs.frozen
class VerifyProblem:
    """One snapshot that failed verification."""

    session_id: str
    reason: str
    #: the file that failed (file stores), None for other backends
    path: str | None = None


def check_blob(codec: SnapshotCodec, blob: bytes, session_id: str) -> str | None:
    """Why *blob* is not a valid snapshot of *session_id*, or None if it is.

    The full check: both tags, decryption, decompression, migration and the
    state schema. The reason never contains state contents.
    """
    try:
        codec.open(blob, expected_session_id=session_id).state()
    except IntegrityError as exc:
        return exc.message
    except Exception as exc:  # e.g. a migration choking on odd data: name the type only
        return f"state could not be decoded ({type(exc).__name__})"
    return None


def verify_store(
    store: SessionStore,
    *,
    progress: Progress | None = None,
    ids: Iterable[str] | None = None,
) -> Iterator[VerifyProblem]:
    """Check every stored snapshot fully (tag, decryption, decompression, schema).

    Reads only; a corrupt snapshot is reported, not repaired. Yields problems.
    *ids* limits the check to those sessions (default: every stored one).
    """
    for i, sid in enumerate(store._ids() if ids is None else ids, 1):  # noqa: SLF001  # TODO boundary
        blob = store._get(sid)  # noqa: SLF001  # TODO boundary
        if blob is not None:
            reason = check_blob(store.codec, blob, sid)
            if reason is not None:
                yield VerifyProblem(sid, reason)
        if progress is not None:
            progress(i)


def export_sessions(store: SessionStore, directory: str | os.PathLike[str]) -> dict[str, str]:
    """Copy every verified snapshot into *directory*; return ``{session_id: sha256}``.

    The files keep the store's format, so they import into any backend that
    shares the keyring.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, str] = {}
    for sid in store._ids():  # noqa: SLF001  # TODO boundary
        try:
            snap = store.load_snapshot(sid)
        except (SessionNotFound, IntegrityError):
            continue
        (out / f"{sid}.snap").write_bytes(snap.blob)
        manifest[sid] = hashlib.sha256(snap.blob).hexdigest()
    return manifest


def import_sessions(
    store: SessionStore, directory: str | os.PathLike[str], manifest: dict[str, str]
) -> int:
    """Load snapshots exported by :func:`export_sessions`, checking each checksum."""
    count = 0
    for sid, digest in manifest.items():
        blob = (Path(directory) / f"{sid}.snap").read_bytes()
        if hashlib.sha256(blob).hexdigest() != digest:
            raise IntegrityError(f"exported snapshot of {sid[:16]}… does not match its checksum")
        session = store.codec.open(blob, expected_session_id=sid).session()
        store.create(session)
        count += 1
    return count


# -- opening a store from a command-line spec -----------------------------------------
#: the store used when none is given
DEFAULT_STORE = "./.stuisession/"
#: URL schemes that name a Redis store
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def is_redis_spec(spec: str) -> bool:
    """True when *spec* names a Redis store (``redis://``, ``rediss://``, ``unix://``)."""
    return spec.lower().startswith(REDIS_SCHEMES)


def store_directory(spec: str) -> Path | None:
    """The directory of a file store *spec* (``PATH`` or ``file:PATH``); None for Redis."""
    if is_redis_spec(spec):
        return None
    return Path(spec.removeprefix("file:"))


def load_keyring(key_file: str | os.PathLike[str] | None, spec: str | None = None) -> Keyring:
    """The keyring an admin command should use, without creating one.

    *key_file* if given, else ``$STUISESSION_KEYRING``, else ``keyring.json``
    in the file store *spec*. Raises :class:`ConfigurationError` when there is
    none (a Redis store has no key file of its own).
    """
    if key_file is not None:
        return Keyring.load(key_file)
    ring = Keyring.from_env()
    if ring is not None:
        return ring
    directory = None if spec is None else store_directory(spec)
    if directory is None:
        raise ConfigurationError(
            "no keyring: give --key-file PATH (the keyring shared by every process "
            "using the store) or set $STUISESSION_KEYRING"
        )
    return Keyring.load(directory / "keyring.json")


def _lock_stripes(directory: Path) -> int | None:
    """The lock striping recorded in an existing file store (None if not readable)."""
    try:
        doc = json.loads((directory / "format.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    stripes = doc.get("lock_stripes") if isinstance(doc, dict) else None
    return stripes if isinstance(stripes, int) and not isinstance(stripes, bool) else None


def open_store(
    spec: str,
    *,
    key_file: str | os.PathLike[str] | None = None,
    create: bool = False,
    **options: Any,
) -> SessionStore:
    """Open the store named by *spec*, as the ``--store`` option of the CLI does.

    * ``PATH`` or ``file:PATH``: a :class:`~stuisession.stores.file.FileStore`
      in that directory;
    * ``redis://...``, ``rediss://...``, ``unix://...``: a
      :class:`~stuisession.stores.redis.RedisStore` (``RedisStore.from_url``).

    Keyring: *key_file* if given, else ``$STUISESSION_KEYRING``, else (file
    store) ``<PATH>/keyring.json``.

    With ``create=False`` (admin commands) nothing new is made: a missing
    store directory or key file is a :class:`ConfigurationError`, so a typo
    never produces an empty store with a fresh key. With ``create=True``
    (``serve``) the directory and a missing key file are created (0700/0600);
    a Redis store then falls back to ``./.stuisession/keyring.json``.

    *options* go to the store's constructor (e.g. ``fsync=False``,
    ``prefix="app"``). A file store's ``lock_stripes`` defaults to what its
    ``format.json`` records.
    """
    directory = store_directory(spec)
    if directory is None:
        if key_file is not None:
            ring = Keyring.load_or_create(key_file) if create else Keyring.load(key_file)
        else:
            env = Keyring.from_env()
            if env is not None:
                ring = env
            elif create:
                ring = Keyring.load_or_create(Path(DEFAULT_STORE) / "keyring.json")
            else:
                ring = load_keyring(None, spec)  # raises: says how to give one
        return RedisStore.from_url(spec, keyring=ring, **options)

    if not create and not directory.is_dir():
        raise ConfigurationError(f"there is no store at {directory}")
    if "lock_stripes" not in options:
        stripes = _lock_stripes(directory)
        if stripes is not None:
            options["lock_stripes"] = stripes
    if key_file is not None:
        ring = Keyring.load_or_create(key_file) if create else Keyring.load(key_file)
        return FileStore(directory, keyring=ring, **options)
    if create:
        return FileStore(directory, **options)
    return FileStore(directory, keyring=load_keyring(None, spec), **options)


# -- listing and summaries --------------------------------------------------------------
def session_state_name(info: SessionInfo, now: float) -> str:
    """``"active"``, ``"closed"`` or ``"expired"`` at *now*."""
    if info.status is SessionStatus.CLOSED:
        return "closed"
    return "expired" if info.is_expired(now) else "active"


def iter_session_rows(
    store: SessionStore, *, client_id: str | None = None
) -> Iterator[tuple[SessionInfo, int | None]]:
    """``(record, snapshot size in bytes)`` of every readable session (of *client_id*).

    Only records are read (head tags verified), never states. Unreadable
    snapshots are skipped (``verify`` reports them). The size is None when the
    snapshot vanished meanwhile.
    """
    if isinstance(store, RedisStore):
        key = store.all_key if client_id is None else store.client_key(client_id)
        if client_id is not None:
            check_client_id(client_id)
        yield from store._readable(key, sizes=True, client_id=client_id)  # noqa: SLF001  # TODO boundary
        return
    infos: Iterable[SessionInfo] = (
        store.iter_infos() if client_id is None else store.list_by_client(client_id)
    )
    for info in infos:
        size: int | None
        if isinstance(store, FileStore):
            paths = store._paths(info.session_id)  # noqa: SLF001  # TODO boundary
            try:
                size = os.stat(paths.current).st_size
            except FileNotFoundError:
                size = None
            with contextlib.suppress(FileNotFoundError):
                if size is not None:
                    size += os.stat(paths.journal).st_size  # changes not yet compacted
        else:
            blob = store._get(info.session_id)  # noqa: SLF001  # TODO boundary
            size = None if blob is None else len(blob)
        yield info, size


def resolve_session_id(store: SessionStore, text: str) -> str:
    """*text* if it is a session id, else the one stored id it is a prefix of.

    A prefix (as ``list`` shows, with or without the trailing ``…``) must be
    at least 12 characters and match exactly one session.
    """
    if is_valid_session_id(text):
        return text
    prefix = text.rstrip("…").rstrip(".")
    if len(prefix) < len(SESSION_ID_PREFIX) + 4 or not prefix.startswith(SESSION_ID_PREFIX):
        raise SessionNotFound("not a session id (nor a prefix of one of 12+ characters)")
    found = [sid for sid in store._ids() if sid.startswith(prefix)]  # noqa: SLF001  # TODO boundary
    if not found:
        raise SessionNotFound("no session id starts with that prefix")
    if len(found) > 1:
        raise SessionNotFound(f"{len(found)} session ids start with that prefix: give more of it")
    return found[0]


def summarize_snapshot(snap: Snapshot) -> dict[str, Any]:
    """Counts over a snapshot's state and facts about its encoding; never values.

    ``session_state_keys`` lists the top-level key names of ``session_state``
    (the client's open object), not their values.
    """
    state = snap.state()
    wire = to_wire(state)
    if state.workspaces:
        variables = sum(len(ws.variables) for ws in state.workspaces.values())
    else:
        names = wire["workspace_context"].get("variables")
        variables = len(names) if isinstance(names, (list, dict)) else 0
    return {
        "workspaces": len(state.workspaces),
        "variables": variables,
        "history": sum(len(ws.history) for ws in state.workspaces.values()),
        "objects": len(state.objects),
        "stale_objects": len(wire["stale_objects"]),
        "inspectors": len(state.inspectors),
        "contexts": len(state.contexts),
        "session_state_keys": sorted(state.session_state),
        "snapshot_bytes": len(snap.blob),
        "schema_version": snap.schema_version,
        "key_id": snap.header.key_id,
        "encrypted": bool(snap.header.flags & FLAG_ENCRYPTED),
    }


def read_snapshot(store: SessionStore, session_id: str) -> Snapshot:
    """The verified snapshot of *session_id*, read without side effects.

    Unlike :meth:`SessionStore.load_snapshot` a corrupt snapshot is not
    replaced by a backup: :class:`IntegrityError` is raised instead.
    """
    blob = store._get(session_id)  # noqa: SLF001  # TODO boundary
    if blob is None:
        raise SessionNotFound("Session not found")
    snap = store.codec.open(blob, expected_session_id=session_id)
    if isinstance(store, FileStore) and store.journal_records(session_id):
        # changes since the snapshot live in the journal: show the current
        # state, sealed in memory (nothing is written)
        session = store.load(session_id)
        snap = store.codec.open(store.codec.encode(session), expected_session_id=session_id)
    return snap


# -- verifying the files of a file store --------------------------------------------------
@attrs.frozen
class SnapshotFile:
    """One snapshot file of a file store: the current one or a backup."""

    session_id: str
    path: str
    #: 0 for the current snapshot, N for the backup ``<id>.snap.N``
    generation: int
    #: (device, inode): hard-linked copies are checked once
    identity: tuple[int, int] = (0, 0)


def snapshot_files(store: FileStore) -> list[SnapshotFile]:
    """Every snapshot and backup file of the file store *store* (names only are read)."""
    sessions = Path(store.path) / "sessions"
    found: list[SnapshotFile] = []
    try:
        shards = sorted(
            (e for e in os.scandir(sessions) if e.is_dir(follow_symlinks=False)),
            key=lambda e: e.name,
        )
    except FileNotFoundError:
        return found
    shard_slice = slice(len(SESSION_ID_PREFIX), len(SESSION_ID_PREFIX) + 2)
    for shard in shards:
        try:
            entries = list(os.scandir(shard.path))
        except FileNotFoundError:
            continue
        for e in entries:
            sid, sep, rest = e.name.partition(".snap")
            if not sep or not is_valid_session_id(sid) or sid[shard_slice] != shard.name:
                continue  # temp files and strays
            if rest == "":
                generation = 0
            elif rest[:1] == "." and rest[1:].isdigit():
                generation = int(rest[1:])
            else:
                continue
            found.append(SnapshotFile(sid, e.path, generation, (shard.inode(), e.inode())))
    found.sort(key=lambda f: (f.path.rpartition(".snap")[0], f.generation))
    return found


def verify_snapshot_files(
    store: FileStore, files: Iterable[SnapshotFile], *, progress: Progress | None = None
) -> Iterator[VerifyProblem]:
    """Check each of *files* fully (as :func:`verify_store` does); yield the bad ones.

    Files that vanished meanwhile (a live bridge deleted or rotated them) are
    skipped. Reads only: nothing is repaired or moved.
    """
    done: dict[tuple[int, int], str | None] = {}
    for i, f in enumerate(files, 1):
        if f.identity in done:
            reason = done[f.identity]
        else:
            reason = _check_file(store.codec, f)
            if f.identity != (0, 0):
                done[f.identity] = reason
        if reason is not None:
            yield VerifyProblem(f.session_id, reason, f.path)
        if progress is not None:
            progress(i)


def _check_file(codec: SnapshotCodec, f: SnapshotFile) -> str | None:
    try:
        blob = FileStore._read(f.path)  # noqa: SLF001  # TODO boundary
    except OSError as exc:
        return f"could not be read ({exc.strerror})"
    if blob is None:
        return None  # gone meanwhile: nothing to check
    reason = check_blob(codec, blob, f.session_id)
    if reason is None and f.generation == 0:
        reason = _check_journal(codec, blob, f)
    return reason


def _check_journal(codec: SnapshotCodec, blob: bytes, f: SnapshotFile) -> str | None:
    """Why the journal extending the snapshot *blob* is bad, or None (also: no journal)."""
    path = f.path[: -len(".snap")] + ".jnl"
    try:
        data = FileStore._read(path)  # noqa: SLF001  # TODO boundary
    except OSError as exc:
        return f"journal could not be read ({exc.strerror})"
    base = journal.snapshot_tag(blob)
    try:
        records = journal.open_journal(codec, data or b"", base_tag=base, session_id=f.session_id)
        if not records:
            return None
        journal.replay(codec.open(blob, expected_session_id=f.session_id).session(), records)
    except IntegrityError as exc:
        return f"journal: {exc.message}"
    return None


# -- export / import directories --------------------------------------------------------
#: the checksum manifest of an export directory
MANIFEST = "manifest.json"
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def export_directory(store: SessionStore, directory: str | os.PathLike[str]) -> dict[str, str]:
    """:func:`export_sessions` into *directory* (made 0700) plus ``manifest.json``.

    The manifest maps each session id to the SHA-256 of its exported file.
    Snapshots that fail their check are left out.
    """
    out = Path(directory)
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    manifest = export_sessions(store, out)
    _write_private(out / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())
    return manifest


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, str]:
    """The checked ``manifest.json`` of an export directory."""
    path = Path(directory) / MANIFEST
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigurationError(f"{path} does not exist: not an export directory") from None
    except ValueError:
        raise IntegrityError(f"{path} is not valid JSON") from None
    if not isinstance(doc, dict):
        raise IntegrityError(f"{path} is not a JSON object")
    for sid, digest in doc.items():
        # ids become file names: only well-formed ones are accepted
        if not is_valid_session_id(sid):
            raise IntegrityError(f"{path} names something that is not a session id")
        if not isinstance(digest, str) or _SHA256_RE.fullmatch(digest) is None:
            raise IntegrityError(f"{path} has a malformed checksum for {sid[:16]}…")
    return doc


@attrs.frozen
class ImportReport:
    """What an import did."""

    #: sessions in the manifest
    total: int
    imported: int
    #: already in the store (an id is never overwritten)
    skipped: int


def import_directory(
    store: SessionStore, directory: str | os.PathLike[str], *, progress: Progress | None = None
) -> ImportReport:
    """Import an export directory with :func:`import_sessions`, all or nothing per session.

    Every file is checked first (checksum, and that it opens under *store*'s
    keyring), so a damaged export or the wrong keyring imports nothing. Then
    each session is created; one whose id is already stored is skipped.
    """
    manifest = read_manifest(directory)
    for sid, digest in manifest.items():
        try:
            blob = (Path(directory) / f"{sid}.snap").read_bytes()
        except FileNotFoundError:
            raise IntegrityError(f"exported snapshot of {sid[:16]}… is missing") from None
        if hashlib.sha256(blob).hexdigest() != digest:
            raise IntegrityError(f"exported snapshot of {sid[:16]}… does not match its checksum")
        reason = check_blob(store.codec, blob, sid)
        if reason is not None:
            raise IntegrityError(f"exported snapshot of {sid[:16]}… does not open: {reason}")
    imported = skipped = 0
    for i, (sid, digest) in enumerate(manifest.items(), 1):
        try:
            imported += import_sessions(store, directory, {sid: digest})
        except ConflictError:
            skipped += 1
        if progress is not None:
            progress(i)
    return ImportReport(len(manifest), imported, skipped)

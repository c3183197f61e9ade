"""Administrative operations on a store: key rotation, verification, export/import.

These are library functions; the ``stuisession`` CLI is a thin layer over them.
Each works session by session with compare-and-swap, so it can run while a
bridge serves the same store, and an interruption (Ctrl-C) leaves every
session either fully processed or untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import attrs

from stuisession import _fs
from stuisession.codec.snapshot import FLAG_ENCRYPTED, Snapshot, parse_header
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
from stuisession.stores.base import (
    Progress,
    SessionStore,
    VerifyItem,
    VerifyProblem,
    check_blob,
)
from stuisession.stores.file.layout import KEYRING_FILE, Layout, recorded_lock_stripes
from stuisession.stores.file.store import FileStore
from stuisession.stores.redis import RedisStore

#: one snapshot file of a file store (the current one or a backup): a verify item
SnapshotFile = VerifyItem

__all__ = [
    "DEFAULT_STORE",
    "MANIFEST",
    "REDIS_SCHEMES",
    "ImportReport",
    "Progress",
    "RotationReport",
    "SnapshotFile",
    "VerifyProblem",
    "check_blob",
    "export_directory",
    "export_sessions",
    "import_directory",
    "import_sessions",
    "is_redis_spec",
    "iter_session_rows",
    "load_keyring",
    "open_store",
    "read_manifest",
    "read_snapshot",
    "resolve_session_id",
    "rotate_keys",
    "session_state_name",
    "snapshot_files",
    "store_directory",
    "summarize_snapshot",
    "verify_snapshot_files",
    "verify_store",
]


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
    for i, sid in enumerate(list(store.ids()), 1):
        try:
            stored = store.raw_snapshot(sid)
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
    chosen = store.ids() if ids is None else ids
    yield from store.verify([VerifyItem(sid) for sid in chosen], progress=progress)


def export_sessions(store: SessionStore, directory: str | os.PathLike[str]) -> dict[str, str]:
    """Copy every verified snapshot into *directory*; return ``{session_id: sha256}``.

    The files keep the store's format, so they import into any backend that
    shares the keyring.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, str] = {}
    for sid in store.ids():
        try:
            snap = store.load_snapshot(sid)
        except (SessionNotFound, IntegrityError):
            continue
        _fs.atomic_write(out / f"{sid}.snap", snap.blob)  # 0600, like the store
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
REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://")


def is_redis_spec(spec: str) -> bool:
    """True when *spec* names a Redis store (``redis://``, ``rediss://``, ``unix://``,
    or a Redis Cluster: ``redis+cluster://host:port[,host:port...]``)."""
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
    return Keyring.load(directory / KEYRING_FILE)


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
    * ``redis://...``, ``rediss://...``, ``unix://...``, ``redis+cluster://...``: a
      :class:`~stuisession.stores.redis.RedisStore` (``RedisStore.from_url``,
      which parses cluster URLs with :func:`~stuisession.stores.redis.parse_cluster_url`).

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
        stripes = recorded_lock_stripes(directory)
        if stripes is not None:
            options["lock_stripes"] = stripes
    if key_file is not None:
        if create and not Path(key_file).exists() and Layout(directory).is_existing():
            # never mint a key inside an existing store: its sessions would be unreadable
            raise ConfigurationError(
                f"key file {key_file} is missing but the store at {directory} already holds "
                "sessions; put the key file back from a backup"
            )
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
    if client_id is not None:
        check_client_id(client_id)
    yield from store.session_rows(client_id)


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
    found = [sid for sid in store.ids() if sid.startswith(prefix)]
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
    return store.read_snapshot(session_id)


# -- verifying the files of a file store --------------------------------------------------
def snapshot_files(store: SessionStore) -> list[SnapshotFile]:
    """What verify checks in *store* (a file store: every snapshot and backup file)."""
    return store.verify_items()


def verify_snapshot_files(
    store: SessionStore, files: Iterable[SnapshotFile], *, progress: Progress | None = None
) -> Iterator[VerifyProblem]:
    """Check each of *files* fully (:meth:`SessionStore.verify`); yield the bad ones.

    Files that vanished meanwhile (a live bridge deleted or rotated them) are
    skipped. Reads only: nothing is repaired or moved.
    """
    return store.verify(files, progress=progress)


# -- export / import directories --------------------------------------------------------
#: the checksum manifest of an export directory
MANIFEST = "manifest.json"
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


def export_directory(store: SessionStore, directory: str | os.PathLike[str]) -> dict[str, str]:
    """:func:`export_sessions` into *directory* (made 0700) plus ``manifest.json``.

    The manifest maps each session id to the SHA-256 of its exported file.
    Snapshots that fail their check are left out.
    """
    out = Path(directory)
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    manifest = export_sessions(store, out)
    _fs.atomic_write(out / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())
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

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
import secrets
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import attrs

from .audit import AuditLog
from .codec import FLAG_ENCRYPTED, Snapshot, SnapshotCodec
from .errors import (
    ConfigurationError,
    ConflictError,
    IntegrityError,
    SessionNotFound,
    StuiSessionError,
)
from .ids import SESSION_ID_PREFIX, is_valid_session_id
from .keys import Keyring
from .model import SessionInfo, SessionStatus
from .state import to_wire
from .stores.base import SessionStore

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
    for i, sid in enumerate(list(store._ids()), 1):
        try:
            snap = store.load_snapshot(sid)
            if snap.header.key_id == ring.current_id:
                skipped += 1
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
    for i, sid in enumerate(store._ids() if ids is None else ids, 1):
        blob = store._get(sid)
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
    for sid in store._ids():
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

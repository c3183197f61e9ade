"""Whole-snapshot commits and deletes of a file store (its ``_put``/``_delete`` primitives).

Split out of :mod:`.store`: a snapshot is written to a temp file and fsync'd
outside the session's stripe lock, then linked (create) or renamed over the
current file (replace) under it, as a compare-and-swap on the stored record.
Also :func:`encode_sized`, the sealing that the journal's compaction shares.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import attrs

from stuisession import _json
from stuisession.codec.snapshot import SnapshotCodec
from stuisession.errors import ConflictError, IntegrityError, SessionNotFound
from stuisession.state.forms import to_wire_dict
from stuisession.state.model import Session, SessionInfo
from stuisession.stores.base import check_snapshot_size
from stuisession.stores.file.atomic import FileWriter
from stuisession.stores.file.cache import HeadCache
from stuisession.stores.file.journal import HeadReader, JournalWriter
from stuisession.stores.file.layout import ClientIndex, Layout, SessionPaths, storage_error
from stuisession.stores.file.locking import StripeLocks


def encode_sized(
    codec: SnapshotCodec,
    session: Session,
    max_size: int | None,
    raw: Mapping[str, bytes] | None = None,
) -> tuple[bytes, int]:
    """``(blob, state JSON bytes)``: the sealed snapshot and what the cache charges.

    *raw*: wire sections whose value is exactly these validated JSON bytes (a
    section the last update replaced wholesale): spliced, not encoded again.
    Raises :class:`~stuisession.errors.StateTooLarge` as ``SessionStore._encode`` does
    (:func:`~stuisession.stores.base.check_snapshot_size`).
    """
    wire = to_wire_dict(session.state)
    if raw:
        spliced = {k: _json.RawJSON(raw[k]) if k in raw else v for k, v in wire.items()}
        state_json = _json.dumps_with_raw(spliced)
    else:
        state_json = _json.dumps(wire)
    blob = codec.encode_state_json(session.info, state_json)
    check_snapshot_size(blob, max_size, session.state)
    return blob, len(state_json)


@attrs.define
class SnapshotCommits:
    """Create, replace and delete whole sessions of one :class:`FileStore`, each under its lock."""

    layout: Layout
    locks: StripeLocks
    cache: HeadCache
    writer: FileWriter
    reader: HeadReader
    jw: JournalWriter
    index: ClientIndex

    def put(self, info: SessionInfo, blob: bytes, expected: SessionInfo | None) -> None:
        """The ``_put`` primitive (see :meth:`SessionStore._put`); StorageError on I/O errors."""
        p = self.layout.paths(info.session_id)
        tmp: str | None = None
        try:
            # the slow part (write + fsync) happens before taking the lock
            tmp = self.writer.write_session_temp(p, blob)
            self.writer.sweep_once(p.dir)
            with self.locks.locked(p.sid):
                if expected is None:
                    self._create_locked(p, tmp, info.revision)
                else:
                    self._replace_locked(p, tmp, expected, info.revision)
        except OSError as exc:
            raise storage_error("write a session snapshot", exc) from exc
        finally:
            if tmp is not None:
                self.writer.discard(tmp)

    def _create_locked(self, p: SessionPaths, tmp: str, revision: int) -> None:
        if self.layout.fs.lexists(p.current):
            # before the mark is written: never lower an existing session's mark
            raise ConflictError("session already exists", current_revision=self._head_revision(p))
        # the mark goes first: a reader never sees the session without it
        self.jw.mark(p, revision)
        try:
            self.layout.fs.link(tmp, p.current)  # atomic create-if-absent
        except FileExistsError:
            raise ConflictError(
                "session already exists", current_revision=self._head_revision(p)
            ) from None
        self.writer.fsync_dir_committed(p.dir)

    def _head_revision(self, p: SessionPaths) -> int | None:
        try:
            return self.reader.read_info(p, locked=True).revision
        except (SessionNotFound, IntegrityError):
            return None

    def _replace_locked(
        self, p: SessionPaths, tmp: str, expected: SessionInfo, new_revision: int
    ) -> None:
        # the whole snapshot is verified (when not cached), not just its head: a
        # corrupt current file must not be rotated into the backups, pushing out
        # a good generation
        stored = self.reader.head(p, decode=False, locked=True).info
        if stored.cas_token != expected.cas_token:
            raise ConflictError(
                "session was changed by another writer", current_revision=stored.revision
            )
        self.jw.rotate_backups(p)
        self.layout.fs.replace(tmp, p.current)
        self.writer.fsync_dir_committed(p.dir)
        self.jw.mark_committed(p, new_revision)
        self.jw.forget_journal(p)
        self.cache.drop(p.sid)

    def delete(self, session_id: str, expected: SessionInfo | None = None) -> bool:
        """The ``_delete`` primitive (see :meth:`SessionStore._delete`)."""
        p = self.layout.paths(session_id)
        fs = self.layout.fs
        try:
            with self.locks.locked(session_id):
                existed = fs.lexists(p.current)
                marker = None
                if existed:
                    info: SessionInfo | None = None
                    with contextlib.suppress(SessionNotFound, IntegrityError):
                        info = self.reader.read_info(p, locked=True)
                        marker = self.index.marker(session_id, info.client_id)
                    if expected is not None and (
                        info is None or info.cas_token != expected.cas_token
                    ):
                        return False  # written (or damaged) since the caller read it
                elif expected is not None:
                    return False
                self.cache.drop(session_id)
                # backups and journal first: a crash part-way leaves the session
                # in place, never backups without their session
                with contextlib.suppress(FileNotFoundError):
                    fs.unlink(p.journal)
                for path in self.layout.backup_files(p):
                    with contextlib.suppress(FileNotFoundError):
                        fs.unlink(path)
                if existed:
                    with contextlib.suppress(FileNotFoundError):
                        fs.unlink(p.current)
                with contextlib.suppress(FileNotFoundError):
                    fs.unlink(p.hwm)  # after the session: never a session without its mark
                if existed:
                    self.writer.fsync_dir(p.dir)
                if marker is not None:  # after the session: never a session without it
                    with contextlib.suppress(FileNotFoundError):
                        fs.unlink(marker)
                # "everything kept for it": set-aside copies go too
                for path in self.layout.quarantine_files(p.sid):
                    with contextlib.suppress(FileNotFoundError):
                        fs.unlink(path)
                return existed
        except OSError as exc:
            raise storage_error("delete a session", exc) from exc

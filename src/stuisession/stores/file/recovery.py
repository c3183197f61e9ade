"""Recovery and quarantine: a snapshot that fails its check is replaced by a backup.

The bad file is hard-linked into ``quarantine/`` (kept for inspection), and
one atomic rename swaps the newest valid backup in, so readers see one or the
other, never nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import threading
import time
from pathlib import Path

import attrs

from stuisession.codec.snapshot import HEADER_SIZE, Snapshot, SnapshotCodec, parse_header
from stuisession.errors import IntegrityError, SessionNotFound
from stuisession.state import lifecycle
from stuisession.state.model import Session
from stuisession.stores.file import hwm
from stuisession.stores.file.atomic import FileWriter, read_file
from stuisession.stores.file.cache import HeadCache
from stuisession.stores.file.layout import ROLLBACK_SUFFIX, Layout, SessionPaths, storage_error
from stuisession.stores.file.locking import StripeLocks

log = logging.getLogger("stuisession.stores.file")


_KEY_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


@attrs.frozen
class Rollback:
    """A session served from an older state than the store had acknowledged.

    ``acknowledged`` is the revision the high-water mark held (None: the mark
    was missing or damaged), ``found`` the revision of the best genuine state
    that was kept, ``note`` the report left in ``quarantine/``.
    """

    session_id: str
    acknowledged: int | None
    found: int
    reason: str
    note: Path


def key_id_damaged(codec: SnapshotCodec, blob: bytes, key_id: str) -> bool:
    """True if *blob*'s unknown key id is damage, not a key this keyring lacks.

    A key id that is not even well-formed is damage; otherwise it is damage
    when putting a known key id of the same length in its place makes the
    snapshot verify (the tags cover the key id bytes).
    """
    if _KEY_ID_RE.fullmatch(key_id) is None:
        return True
    start = HEADER_SIZE
    for candidate in codec.keyring.key_ids:
        if len(candidate) != len(key_id):
            continue
        fixed = blob[:start] + candidate.encode("ascii") + blob[start + len(key_id) :]
        try:
            codec.open(fixed)
        except IntegrityError:
            continue
        return True
    return False


def session_ref(session_id: str) -> str:
    """A short, non-reversible reference to a session id, for logs."""
    return hashlib.sha256(session_id.encode("ascii")).hexdigest()[:16]


class Recovery:
    """Rolls a damaged current snapshot back to the newest valid backup."""

    def __init__(
        self,
        codec: SnapshotCodec,
        *,
        layout: Layout,
        locks: StripeLocks,
        cache: HeadCache,
        writer: FileWriter,
        backups: int,
    ) -> None:
        self._codec = codec
        self._layout = layout
        self._locks = locks
        self._cache = cache
        self._writer = writer
        #: file operations beneath the store directory (never through a symlink)
        self.fs = writer.fs
        self._backups = backups
        self._quarantined: list[Path] = []
        self._rollbacks: list[Rollback] = []
        self._meta_lock = threading.Lock()
        self.locks = locks
        #: the audit anchor recorded with a lowered mark (:meth:`FileStore.anchor_audit`)
        self.anchor: hwm.AnchorSource | None = None

    def rollbacks(self) -> list[Rollback]:
        """Rollbacks this store instance detected and settled (oldest first)."""
        with self._meta_lock:
            return list(self._rollbacks)

    def settle_locked(
        self,
        p: SessionPaths,
        *,
        acknowledged: int | None,
        found: int,
        reason: str,
        present: bool = True,
        session: Session | None = None,
    ) -> Rollback:
        """Accept the best genuine state (revision *found*) loudly (stripe lock held).

        Keeps a copy of the journal and a note in ``quarantine/`` (``verify``
        reports it until an operator removes it), logs an ERROR and moves the
        high-water mark to *found*, so later reads serve that state.

        *session* (the state found: snapshot plus the valid journal records)
        is written back as a new snapshot on a new lineage (and a higher
        record version), before the mark is lowered: a client that saw a later
        revision of the lost history is told it is not in sync (full state,
        never a delta), and no write based on it lands. A crash before the
        mark is lowered leaves the state below the mark: the next read settles
        again.
        """
        self._cache.drop(p.sid)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        rand = secrets.token_hex(4)
        evidence = read_file(p.journal, fs=self.fs)
        if evidence:
            # a copy, not a link: the journal is cut and appended in place later
            tmp = self._writer.write_temp(self._layout.quarantine_dir, p.name, evidence)
            self.fs.replace(
                tmp, os.path.join(self._layout.quarantine_dir, f"{p.name}.{stamp}.{rand}.jnl.bad")
            )
        note = {
            "session_ref": session_ref(p.sid),
            "acknowledged_revision": acknowledged,
            "found_revision": found,
            "lost_revisions": None if acknowledged is None else max(0, acknowledged - found),
            "reason": reason,
            "time": stamp,
        }
        path = Path(self._layout.quarantine_dir) / f"{p.name}.{stamp}.{rand}{ROLLBACK_SUFFIX}"
        tmp = self._writer.write_temp(
            self._layout.quarantine_dir, p.name, json.dumps(note).encode()
        )
        self.fs.replace(tmp, str(path))
        self._writer.fsync_dir(self._layout.quarantine_dir)
        if session is not None:
            self._relineage_locked(p, session)
        created = hwm.write(
            self._codec.keyring,
            p.sid,
            p.hwm,
            found,
            fsync=self._writer.fsync,
            lower=True,
            fs=self.fs,
            anchor=self.anchor,
        )
        if created:
            self._writer.fsync_dir(p.dir)
        rollback = Rollback(p.sid, acknowledged, found, reason, path)
        with self._meta_lock:
            self._rollbacks.append(rollback)
        log.error(
            "file store: session ref %s: %s; acknowledged revision %s, serving revision %d "
            "(the best genuine state); report kept in quarantine/",
            session_ref(p.sid),
            reason,
            "unknown" if acknowledged is None else acknowledged,
            found,
        )
        return rollback

    def _relineage_locked(self, p: SessionPaths, session: Session) -> None:
        """Replace snapshot and journal by *session* on a new lineage (stripe lock held)."""
        info = lifecycle.relineage(session.info)
        blob = self._codec.encode(Session.from_info(info, session.state))
        tmp = self._writer.write_session_temp(p, blob)
        try:
            self.fs.replace(tmp, p.current)
        except BaseException:
            self._writer.discard(tmp)
            raise
        self._writer.fsync_dir(p.dir)
        # the journal names the replaced snapshot (ignored from now on); its
        # copy is in quarantine/ already
        try:
            fd = self.fs.open(p.journal, os.O_WRONLY)
        except FileNotFoundError:
            return
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)

    def quarantined(self) -> list[Path]:
        """Files moved to ``quarantine/`` by this store instance (oldest first)."""
        with self._meta_lock:
            return list(self._quarantined)

    def recover(self, session_id: str, error: IntegrityError) -> Snapshot:
        """Recover *session_id* (takes its lock); raises *error* if no backup is valid."""
        p = self._layout.paths(session_id)
        try:
            with self._locks.locked(session_id):
                # re-read under the lock: another writer may have replaced or
                # already recovered the file since our unlocked read
                blob = read_file(p.current, fs=self.fs)
                if blob is None:
                    raise SessionNotFound("Session not found")
                try:
                    return self._codec.open(blob, expected_session_id=session_id)
                except IntegrityError as exc:
                    return self.restore_locked(p, blob, exc)
        except OSError as exc:
            raise storage_error("recover a session snapshot", exc) from exc

    def _must_not_roll_back(self, blob: bytes) -> bool:
        """True if *blob* failed for a reason other than damage to its bytes.

        A snapshot sealed with a key this keyring lacks (another process has
        rotated keys, or the wrong key file is configured) is a configuration
        problem, and an intact snapshot of another session means the file names
        collide (e.g. a case-insensitive file system): rolling back would
        discard a valid snapshot in both cases.
        """
        try:
            key_id = parse_header(blob).key_id
            if key_id not in self._codec.keyring:
                return not key_id_damaged(self._codec, blob, key_id)
            self._codec.open(blob)
        except IntegrityError:
            return False
        return True

    def restore_locked(self, p: SessionPaths, bad: bytes, error: IntegrityError) -> Snapshot:
        """Replace the corrupt current file by the newest valid backup (stripe lock held).

        The bad file goes to ``quarantine/``; backups that fail their check too
        are quarantined as well. Raises *error* if no backup is valid.
        """
        if self._must_not_roll_back(bad):
            raise error
        self._cache.drop(p.sid)
        found: tuple[int, Snapshot] | None = None
        for k in range(1, self._backups + 1):
            blob = read_file(p.backup(k), fs=self.fs)
            if blob is None:
                continue
            try:
                found = (k, self._codec.open(blob, expected_session_id=p.sid))
                break
            except IntegrityError:
                continue
        if found is None:
            raise error  # the bad file stays in place: it is all there is
        good, snap = found
        moved = [self._quarantine(p, p.current, "snap", move=False)]
        for k in range(1, good):  # newer backups that failed their check too
            if self.fs.lexists(p.backup(k)):
                moved.append(self._quarantine(p, p.backup(k), f"snap.{k}", move=True))
        # the backup is an older state: put it on a new lineage (and a higher
        # record version) so a client that saw a later revision is told it is
        # not in sync, and no write based on the lost record lands
        snap = self._codec.open(
            self._codec.rewrite_info(snap, lifecycle.relineage(snap.info)),
            expected_session_id=p.sid,
        )
        tmp = self._writer.write_session_temp(p, snap.blob)
        # one atomic rename swaps the bad current file for the good backup:
        # readers see one or the other, never nothing
        try:
            self.fs.replace(tmp, p.current)
        except BaseException:
            self._writer.discard(tmp)
            raise
        self.fs.unlink(p.backup(good))
        older = [k for k in range(good + 1, self._backups + 1) if self.fs.lexists(p.backup(k))]
        for new_k, old_k in enumerate(older, start=1):
            self.fs.replace(p.backup(old_k), p.backup(new_k))
        self._writer.fsync_dir(self._layout.quarantine_dir)
        self._writer.fsync_dir(p.dir)
        with self._meta_lock:
            self._quarantined.extend(moved)
        log.error(
            "file store: snapshot of session ref %s failed its check (%s); moved %d file(s) "
            "to quarantine and restored backup %d (revision %d)",
            session_ref(p.sid),
            error.message,
            len(moved),
            good,
            snap.info.revision,
        )
        return snap

    def _quarantine(self, p: SessionPaths, path: str, kind: str, *, move: bool) -> Path:
        """Hard-link *path* into ``quarantine/`` under a unique name (kept for inspection).

        With *move*, the original is removed (backups; the current file is
        replaced by the caller instead, so that it never goes missing).
        """
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        while True:
            name = f"{p.name}.{stamp}.{secrets.token_hex(4)}.{kind}.bad"
            dst = os.path.join(self._layout.quarantine_dir, name)
            try:
                self.fs.link(path, dst)
            except FileExistsError:
                continue
            if move:
                self.fs.unlink(path)
            return Path(dst)

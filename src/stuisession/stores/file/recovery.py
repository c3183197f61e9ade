"""Recovery and quarantine: a snapshot that fails its check is replaced by a backup.

The bad file is hard-linked into ``quarantine/`` (kept for inspection), and
one atomic rename swaps the newest valid backup in, so readers see one or the
other, never nothing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import threading
import time
from pathlib import Path

from stuisession.codec.snapshot import Snapshot, SnapshotCodec, parse_header
from stuisession.errors import IntegrityError, SessionNotFound
from stuisession.state import lifecycle
from stuisession.stores.file.atomic import FileWriter, read_file
from stuisession.stores.file.cache import HeadCache
from stuisession.stores.file.layout import Layout, SessionPaths, storage_error
from stuisession.stores.file.locking import StripeLocks

log = logging.getLogger("stuisession.stores.file")


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
        self._backups = backups
        self._quarantined: list[Path] = []
        self._meta_lock = threading.Lock()

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
                blob = read_file(p.current)
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
            if parse_header(blob).key_id not in self._codec.keyring:
                return True
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
            blob = read_file(p.backup(k))
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
            if os.path.lexists(p.backup(k)):
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
            os.replace(tmp, p.current)
        except BaseException:
            self._writer.discard(tmp)
            raise
        os.unlink(p.backup(good))
        older = [k for k in range(good + 1, self._backups + 1) if os.path.lexists(p.backup(k))]
        for new_k, old_k in enumerate(older, start=1):
            os.replace(p.backup(old_k), p.backup(new_k))
        self._writer.fsync_dir(self._layout.quarantine_dir)
        self._writer.fsync_dir(p.dir)
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

    def _quarantine(self, p: SessionPaths, path: str, kind: str, *, move: bool) -> Path:
        """Hard-link *path* into ``quarantine/`` under a unique name (kept for inspection).

        With *move*, the original is removed (backups; the current file is
        replaced by the caller instead, so that it never goes missing).
        """
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        while True:
            name = f"{p.sid}.{stamp}.{secrets.token_hex(4)}.{kind}.bad"
            dst = os.path.join(self._layout.quarantine_dir, name)
            try:
                os.link(path, dst)
            except FileExistsError:
                continue
            if move:
                os.unlink(path)
            return Path(dst)

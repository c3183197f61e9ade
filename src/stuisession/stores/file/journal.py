"""The journal and compaction of a file store.

Updates are sealed deltas appended to ``<id>.jnl``; a session's current state
is its snapshot plus the journal's records (a :class:`~.cache.Head`). When the
journal grows past its limit, or a restore needs the stored bytes, it is
folded into a new snapshot (compaction) and emptied.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Mapping

import attrs

from stuisession import _fs
from stuisession.codec import journal
from stuisession.codec.snapshot import FORMAT_VERSION as SNAPSHOT_FORMAT
from stuisession.codec.snapshot import TAG_SIZE, Snapshot, SnapshotCodec
from stuisession.errors import ConflictError, IntegrityError, SessionNotFound, StorageError
from stuisession.state.model import Session, SessionInfo
from stuisession.stores._cost import decoded_cost
from stuisession.stores.file import hwm
from stuisession.stores.file.atomic import FileWriter, pread_head, read_file
from stuisession.stores.file.cache import FileKey, Head, HeadCache, file_key
from stuisession.stores.file.layout import SessionPaths, errno_name
from stuisession.stores.file.locking import StripeLocks
from stuisession.stores.file.recovery import Recovery

log = logging.getLogger("stuisession.stores.file")

_MIN_JOURNAL_LIMIT = 64 * 1024
#: how often a read is retried when the files change under it
_READ_ATTEMPTS = 16


class _Suspect(Exception):
    """An unlocked read found the state below its high-water mark: re-read under the lock."""


class HeadReader:
    """Reads a session's head (snapshot plus journal), through the cache.

    With *marks*, every uncached read is checked against the session's
    high-water mark (:mod:`.hwm`): a state below the acknowledged revision is
    settled by :meth:`Recovery.settle_locked` (quarantined, reported), and
    what follows the valid prefix of a journal that reaches the mark is an
    unacknowledged, torn append.
    """

    def __init__(
        self, codec: SnapshotCodec, cache: HeadCache, recovery: Recovery, *, marks: bool = True
    ) -> None:
        self._codec = codec
        self._cache = cache
        self._recovery = recovery
        self._fs = recovery.fs
        self.marks = marks

    def head(self, p: SessionPaths, *, decode: bool, locked: bool = False) -> Head:
        """The session's current head, revalidated against its files.

        Without the lock, a compaction may replace the snapshot while we read:
        the snapshot is stat'ed again after the journal has been read, and the
        read is retried if it changed.
        """
        for _ in range(_READ_ATTEMPTS):
            snap_key = file_key(p.current)
            if snap_key is None:
                raise SessionNotFound("Session not found")
            jnl_key = file_key(p.journal)
            cached = self._cache.get(p.sid)
            if cached is not None and cached.snap_key == snap_key:
                if cached.jnl_key == jnl_key and (cached.session is not None or not decode):
                    return cached
                grown = self._catch_up(p, cached, jnl_key, decode)
                if grown is not None:
                    return grown
            try:
                head = self._read_head(p, decode=decode, locked=locked)
            except _Suspect:
                with self._recovery.locks.locked(p.sid):
                    head = self._read_head(p, decode=decode, locked=True)
            if head is not None:
                self._cache.put(p.sid, head)
                return head
        raise StorageError("session files kept changing while being read", reason="busy")

    def _read_head(self, p: SessionPaths, *, decode: bool, locked: bool) -> Head | None:
        """Read snapshot and journal from disk (None: they changed meanwhile, retry)."""
        mark = self._read_mark(p)
        snap_key = file_key(p.current)
        blob = read_file(p.current, fs=self._fs)
        if blob is None or snap_key is None:
            raise SessionNotFound("Session not found")
        try:
            snap = self._codec.open(blob, expected_session_id=p.sid)
        except IntegrityError as exc:
            if locked:
                self._recovery.restore_locked(p, blob, exc)
            else:
                self._recovery.recover(p.sid, exc)
            return None  # the current file was replaced by a backup: read again
        jnl_key = file_key(p.journal)
        data = read_file(p.journal, fs=self._fs)
        if file_key(p.current) != snap_key or file_key(p.journal) != jnl_key:
            return None
        base_tag = journal.snapshot_tag(blob)
        found, scan = journal.scan_journal(
            self._codec, data or b"", base_tag=base_tag, session_id=p.sid
        )
        records = scan.records
        end = 0 if found is None else scan.end
        info = records[-1].info if records else snap.info
        if self.marks:
            # the mark was read first: it never runs ahead of what is read after it
            if not self._mark_holds(
                p,
                mark,
                info.revision,
                scan.problem,
                locked=locked,
                found_state=lambda: journal.replay(snap.session(), records),
            ):
                return None  # settled: read again
        elif scan.problem is not None and not scan.incomplete:
            raise scan.problem
        session = None
        cost = len(blob)
        state_size: int | None = None
        if decode:
            session = journal.replay(snap.session(), records)
            # charged by what is held: the decoded state, not the compressed blob
            state_size = len(snap.state_json()) + sum(len(r.payload) for r in records)
            cost = decoded_cost(len(blob), state_size)
            snap.forget_state_json()
        return Head(
            snap_key=snap_key,
            jnl_key=jnl_key,
            snapshot=snap,
            base_tag=base_tag,
            last_tag=records[-1].tag if records else base_tag,
            end=end,
            jnl_version=found.version if found is not None else journal.VERSION,
            records=len(records),
            updates=sum(r.kind == journal.KIND_UPDATE for r in records),
            info=info,
            session=session,
            cost=cost,
            state_size=state_size,
        )

    def _read_mark(self, p: SessionPaths) -> hwm.Mark | None:
        if not self.marks:
            return None
        return hwm.read(self._codec.keyring, p.sid, p.hwm, fs=self._fs)

    def _mark_holds(
        self,
        p: SessionPaths,
        mark: hwm.Mark | None,
        found: int,
        problem: IntegrityError | None,
        *,
        locked: bool,
        found_state: Callable[[], Session],
    ) -> bool:
        """True if the state read (revision *found*) is what the mark says was acknowledged.

        Otherwise: unlocked, raise :class:`_Suspect` (the caller re-reads under
        the lock); locked, settle it (quarantine, note, log, lower the mark)
        and raise :class:`IntegrityError` (``details.rolled_back``) for this
        read; later reads serve the settled state, on a new lineage
        (*found_state* is decoded for that). A damaged or missing mark
        over an intact state is reported the same way but the read succeeds
        (nothing was lost that can be shown).
        """
        assert mark is not None
        if mark.revision is not None and found >= mark.revision and not mark.damaged:
            # a journal problem past the acknowledged records is a torn append
            return True
        if not locked:
            raise _Suspect
        if mark.revision is None or found >= mark.revision:
            reason = (
                "high-water mark is missing" if not mark.present else "high-water mark is damaged"
            )
        elif problem is not None:
            reason = f"acknowledged journal records are unreadable ({problem.message})"
        else:
            reason = (
                "the stored state went backwards (journal cut or removed, or an older snapshot)"
            )
        self._recovery.settle_locked(
            p,
            acknowledged=mark.revision,
            found=found,
            reason=reason,
            present=mark.present,
            session=found_state(),
        )
        if mark.revision is not None and found < mark.revision:
            raise IntegrityError(
                f"session state went backwards: {reason}; acknowledged revision "
                f"{mark.revision}, the best genuine state is revision {found} "
                "(served from now on; see quarantine/)",
                rolled_back=True,
                acknowledged_revision=mark.revision,
                found_revision=found,
            )
        return False

    def _catch_up(
        self, p: SessionPaths, cached: Head, jnl_key: FileKey | None, decode: bool
    ) -> Head | None:
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
        fd = self._fs.open(p.journal, os.O_RDONLY)
        try:
            st = os.fstat(fd)
            if journal.base_of(os.pread(fd, journal.HEADER_SIZE, 0)) != cached.base_tag:
                return None
            tail = os.pread(fd, st.st_size - cached.end, cached.end)
        finally:
            os.close(fd)
        if (st.st_ino, st.st_size, st.st_mtime_ns) != jnl_key:
            return None
        scan = journal.scan_records(
            self._codec,
            tail,
            start=0,
            base_tag=cached.base_tag,
            prev_tag=cached.last_tag,
            session_id=p.sid,
            version=cached.jnl_version,
        )
        if scan.problem is not None:
            return None  # a full read decides whether it is torn or damage
        records = scan.records
        session = cached.session
        state_size = cached.state_size
        if session is not None:
            session = journal.replay(session, records)
            if state_size is not None:
                state_size += sum(len(r.payload) for r in records)
        head = attrs.evolve(
            cached,
            jnl_key=jnl_key,
            last_tag=records[-1].tag if records else cached.last_tag,
            end=cached.end + (records[-1].end if records else 0),
            records=cached.records + len(records),
            updates=cached.updates + sum(r.kind == journal.KIND_UPDATE for r in records),
            info=records[-1].info if records else cached.info,
            session=session,
            cost=(
                cached.cost
                if session is None or state_size is None
                else decoded_cost(len(cached.snapshot.blob), state_size)
            ),
            state_size=state_size if session is not None else None,
        )
        self._cache.put(p.sid, head)
        return head

    def read_info(self, p: SessionPaths, *, locked: bool = False) -> SessionInfo:
        """The current record without reading the snapshot's state (listing, sweeps).

        With *locked* (the caller holds the stripe lock) a damaged snapshot is
        reported instead of recovered, which would need the lock.
        """
        for _ in range(_READ_ATTEMPTS):
            try:
                fd = self._fs.open(p.current, os.O_RDONLY)
            except FileNotFoundError:
                raise SessionNotFound("Session not found") from None
            try:
                size = os.fstat(fd).st_size
                head = pread_head(fd)
                try:
                    info = self._codec.read_info(head, expected_session_id=p.sid)
                except IntegrityError as exc:
                    if locked:
                        raise
                    return self._recovery.recover(p.sid, exc).info
                jnl_key = file_key(p.journal)
                if jnl_key is None or jnl_key[1] <= journal.HEADER_SIZE:
                    return info
                base_tag = os.pread(fd, TAG_SIZE, max(0, size - TAG_SIZE))
            finally:
                os.close(fd)
            data = read_file(p.journal, fs=self._fs) or b""
            if file_key(p.journal) != jnl_key:
                continue  # appended or compacted meanwhile
            # listing only: the valid prefix (loads check it against the mark)
            _, scan = journal.scan_journal(self._codec, data, base_tag=base_tag, session_id=p.sid)
            return scan.records[-1].info if scan.records else info
        raise StorageError("session files kept changing while being read", reason="busy")


class JournalWriter:
    """Appends journal records as compare-and-swaps and compacts journals."""

    def __init__(
        self,
        codec: SnapshotCodec,
        cache: HeadCache,
        locks: StripeLocks,
        reader: HeadReader,
        writer: FileWriter,
        *,
        backups: int,
        journal_limit: int | None,
        marks: bool = True,
        encode: Callable[..., tuple[bytes, int]],
    ) -> None:
        self._codec = codec
        self._cache = cache
        self._locks = locks
        self._reader = reader
        self._writer = writer
        self._backups = backups
        self._journal_max = journal_limit
        self._encode = encode
        self.marks = marks
        #: the audit anchor recorded with every mark (:meth:`FileStore.anchor_audit`)
        self.anchor: hwm.AnchorSource | None = None

    def mark(self, p: SessionPaths, revision: int) -> None:
        """Record *revision* as acknowledged (after it is durable, before the write returns)."""
        if not self.marks:
            return
        if hwm.write(
            self._codec.keyring,
            p.sid,
            p.hwm,
            revision,
            fsync=self._writer.fsync,
            fs=self._writer.fs,
            anchor=self.anchor,
        ):
            self._writer.fsync_dir_committed(p.dir)

    def mark_committed(self, p: SessionPaths, revision: int) -> None:
        """:meth:`mark` after a snapshot was renamed into place (the change is visible).

        A failure then leaves the change committed with unknown durability,
        which the error says (``reason: durability_unknown``), as for the
        directory fsync before it.
        """
        try:
            self.mark(p, revision)
        except OSError as exc:
            name = errno_name(exc)
            raise StorageError(
                f"file store committed a change but could not record it durably: {name} "
                f"({exc.strerror})",
                errno=name,
                reason="durability_unknown",
            ) from exc

    def _limit(self, head: Head) -> int:
        if self._journal_max is not None:
            return self._journal_max
        return max(_MIN_JOURNAL_LIMIT, len(head.snapshot.blob))

    def commit(
        self,
        p: SessionPaths,
        session: Session | None,
        expected: SessionInfo,
        max_size: int | None,
        payload: bytes | None,
        *,
        info: SessionInfo | None = None,
        raw: Mapping[str, bytes] | None = None,
    ) -> None:
        """Append one record (an update, or with *info* a new record only) as a CAS.

        The CAS compares the record version and lineage (every write bumps the
        version), so a write-back of a stale read never lands.
        *raw*: wire sections of *session* given as validated JSON bytes (for a compaction).
        """
        with self._locks.locked(p.sid):
            head = self._reader.head(p, decode=False, locked=True)
            if head.info.cas_token != expected.cas_token:
                raise ConflictError(
                    "session was changed by another writer", current_revision=head.info.revision
                )
            new_info = session.info if session is not None else info
            assert new_info is not None
            old_format = head.snapshot.header.format_version != SNAPSHOT_FORMAT
            if old_format or (head.jnl_version != journal.VERSION and head.records):
                # never append new frames to an old-format journal, nor extend a snapshot
                # of an older format (its record in clear): fold into a new snapshot
                head = self._reader.head(p, decode=True, locked=True)
                assert head.session is not None
                current = session or Session.from_info(new_info, head.session.state)
                blob, state_size = self._encode(current, max_size)
                self.write_snapshot_locked(p, current, blob, state_size)
                return
            kind = journal.KIND_UPDATE if payload is not None else journal.KIND_INFO
            record = journal.seal(
                self._codec,
                new_info,
                kind=kind,
                base_tag=head.base_tag,
                prev_tag=head.last_tag,
                payload=payload or b"",
            )
            grows = head.journal_bytes + len(record)
            too_big = max_size is not None and len(head.snapshot.blob) + grows > max_size
            if session is not None and (too_big or grows > self._limit(head)):
                # fold everything into a new snapshot; its size is checked exactly
                blob, state_size = self._encode(session, max_size, raw)
                self.write_snapshot_locked(p, session, blob, state_size)
                return
            restart = head.end == 0 or head.jnl_version != journal.VERSION
            self._append_locked(p, head, record, new_info.revision)
            # the decoded session is kept only when its state's size is known (the
            # previous head was decoded): the cache charges what it really holds
            new_session = None
            new_size: int | None = None
            if head.session is not None and head.state_size is not None:
                new_session = session or Session.from_info(new_info, head.session.state)
                new_size = head.state_size + len(payload or b"")
            self._cache.put(
                p.sid,
                attrs.evolve(
                    head,
                    jnl_key=file_key(p.journal),
                    last_tag=record[-(TAG_SIZE + 4) : -4],
                    end=(journal.HEADER_SIZE if restart else head.end) + len(record),
                    jnl_version=journal.VERSION,
                    records=head.records + 1,
                    updates=head.updates + (payload is not None),
                    info=new_info,
                    session=new_session,
                    cost=(
                        len(head.snapshot.blob)
                        if new_size is None
                        else decoded_cost(len(head.snapshot.blob), new_size)
                    ),
                    state_size=new_size,
                ),
            )

    def _append_locked(self, p: SessionPaths, head: Head, record: bytes, revision: int) -> None:
        """Append *record* durably, then mark *revision* (stripe lock held).

        Cuts off a torn tail first. If the mark can not be written the record
        is cut off again: the update is not acknowledged, and must not appear.
        """
        existed = head.jnl_key is not None
        restart = head.end == 0 or head.jnl_version != journal.VERSION
        fd = self._writer.fs.open(p.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            size = os.fstat(fd).st_size
            data = record
            if restart:
                # no valid journal for this snapshot yet: start one
                if size:
                    os.ftruncate(fd, 0)
                data = journal.header(head.base_tag) + record
            elif size != head.end:
                os.ftruncate(fd, head.end)  # an unacknowledged, torn append
            _fs.write_all(fd, data)
            if self._writer.fsync:
                os.fdatasync(fd)
        except BaseException:
            # whatever reached the file is not acknowledged: cut it off again
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0 if restart else head.end)
            raise
        finally:
            os.close(fd)
        if not existed:
            self._writer.fsync_dir_committed(p.dir)
        try:
            self.mark(p, revision)
        except OSError:
            with contextlib.suppress(OSError):
                fd = self._writer.fs.open(p.journal, os.O_WRONLY)
                try:
                    os.ftruncate(fd, 0 if restart else head.end)
                finally:
                    os.close(fd)
            raise

    def compact(self, p: SessionPaths) -> Snapshot:
        """Fold the journal into a new snapshot (takes the lock); return it."""
        with self._locks.locked(p.sid):
            head = self._reader.head(p, decode=True, locked=True)
            if head.updates == 0:
                return head.snapshot.with_info(head.info)
            assert head.session is not None
            blob, state_size = self._encode(head.session, None)
            return self.write_snapshot_locked(p, head.session, blob, state_size)

    def write_snapshot_locked(
        self, p: SessionPaths, session: Session, blob: bytes, state_size: int
    ) -> Snapshot:
        """Replace the snapshot by *blob* (the state after every journal record).

        *state_size* is the JSON size of *session*'s state (bytes), which the
        cache charges for keeping *session* decoded.
        """
        tmp = self._writer.write_session_temp(p, blob)
        try:
            self.rotate_backups(p)
            self._writer.fs.replace(tmp, p.current)
            self._writer.fsync_dir_committed(p.dir)
        finally:
            self._writer.discard(tmp)  # gone after the rename; removed if it failed
        self.mark_committed(p, session.info.revision)
        self.forget_journal(p)
        snap = self._codec.open(blob, expected_session_id=p.sid)
        snap_key = file_key(p.current)
        if snap_key is not None:
            self._cache.put(
                p.sid,
                Head(
                    snap_key=snap_key,
                    jnl_key=file_key(p.journal),
                    snapshot=snap,
                    base_tag=journal.snapshot_tag(blob),
                    last_tag=journal.snapshot_tag(blob),
                    end=0,
                    records=0,
                    updates=0,
                    info=session.info,
                    session=session,
                    jnl_version=journal.VERSION,
                    cost=decoded_cost(len(blob), state_size),
                    state_size=state_size,
                ),
            )
        return snap

    def forget_journal(self, p: SessionPaths) -> None:
        """Empty the journal after its snapshot was replaced (the rename is durable).

        Not synced: a journal that survives a crash names the old snapshot and
        is ignored.
        """
        try:
            # ftruncate on an O_NOFOLLOW descriptor: a journal swapped for a
            # symlink is refused (ELOOP), never followed out of the store
            fd = self._writer.fs.open(p.journal, os.O_WRONLY)
            try:
                os.ftruncate(fd, 0)
            finally:
                os.close(fd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            # the new snapshot is durable already; the journal names the old one
            # and is ignored, and the next append starts it over
            log.warning("file store: could not empty a journal: %s", errno_name(exc))

    def rotate_backups(self, p: SessionPaths) -> None:
        """Shift backups one generation older and hard-link the current file as ``.1``.

        Renames and a link only: no snapshot is copied, and the current file
        stays in place throughout.
        """
        if self._backups == 0:
            return
        for k in range(self._backups - 1, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                self._writer.fs.replace(p.backup(k), p.backup(k + 1))
        first = p.backup(1)
        try:
            self._writer.fs.link(p.current, first)
        except FileExistsError:  # backups=1, or an earlier write failed after linking
            self._writer.fs.unlink(first)
            self._writer.fs.link(p.current, first)

"""Verification of a file store's files: every snapshot, backup, journal and mark.

Reads only: a bad file is reported, never repaired or moved. Reported as well:
a session whose state is below its high-water mark (what was lost), a missing
or damaged mark, and every rollback a store settled (its note in
``quarantine/`` stays until an operator removes it).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator

from stuisession import _fs
from stuisession.codec import journal
from stuisession.codec.snapshot import SnapshotCodec, parse_header
from stuisession.errors import IntegrityError
from stuisession.stores.base import (
    AuditAnchors,
    Progress,
    VerifyItem,
    VerifyProblem,
    check_blob,
)
from stuisession.stores.file import hwm
from stuisession.stores.file.atomic import read_file
from stuisession.stores.file.layout import HWM_SUFFIX, JOURNAL_SUFFIX, Layout, journal_path
from stuisession.stores.file.recovery import key_id_damaged


def verify_items(layout: Layout) -> list[VerifyItem]:
    """Every snapshot and backup file of the store (names only are read)."""
    return [
        VerifyItem(sid, generation, path, identity)
        for sid, path, generation, identity in layout.snapshot_files()
    ]


def _mark_path(snapshot_path: str) -> str:
    return journal_path(snapshot_path)[: -len(JOURNAL_SUFFIX)] + HWM_SUFFIX


def audit_anchors(codec: SnapshotCodec, layout: Layout) -> AuditAnchors:
    """The audit anchor of every current session's high-water mark (reads only).

    A mark that is damaged (or can not be read) is listed in ``damaged``: the
    anchor it may hold is unknown. A missing mark holds none (``verify``
    reports it).
    """
    anchors: list[tuple[int, str, str]] = []
    damaged: list[tuple[str, str]] = []
    for sid, path, generation, _ in layout.snapshot_files():
        if generation != 0:
            continue
        mark_path = _mark_path(path)
        try:
            mark = hwm.read(codec.keyring, sid, mark_path, fs=layout.fs)
        except OSError as exc:
            damaged.append((mark_path, f"could not be read ({exc.strerror})"))
            continue
        if mark.damaged:
            damaged.append((mark_path, "high-water mark is damaged"))
        if mark.audit is not None:
            anchors.append((mark.audit[0], mark.audit[1], mark_path))
    return AuditAnchors(tuple(anchors), tuple(damaged))


def verify_files(
    codec: SnapshotCodec,
    layout: Layout,
    items: Iterable[VerifyItem],
    *,
    progress: Progress | None = None,
    marks: bool = True,
) -> Iterator[VerifyProblem]:
    """Check each file of *items* fully; yield the bad ones.

    An item without a path stands for the session's current snapshot file.
    Files that vanished meanwhile (a live bridge deleted or rotated them) are
    skipped. Hard-linked copies (same identity) are checked once.
    """
    done: dict[tuple[int, int], str | None] = {}
    notes = layout.rollback_notes()
    for i, named in enumerate(items, 1):
        item = named
        if item.path is None:
            item = VerifyItem(item.session_id, 0, layout.paths(item.session_id).current)
        if item.identity in done:
            reason = done[item.identity]
        else:
            reason = _check_file(codec, item, marks=marks, fs=layout.fs)
            if item.identity != (0, 0):
                done[item.identity] = reason
        if reason is not None:
            yield VerifyProblem(item.session_id, reason, item.path)
        if item.generation == 0 and item.path is not None:
            # notes are named by the session's file name stem, like its snapshot
            stem = os.path.basename(item.path).partition(".")[0]
            for note in notes.get(stem, []):
                yield VerifyProblem(item.session_id, _describe_note(note, layout.fs), note)
        if progress is not None:
            progress(i)


def _describe_note(path: str, fs: _fs.Beneath) -> str:
    try:
        note = json.loads(read_file(path, fs=fs) or b"{}")
        return (
            f"rolled back: acknowledged revision {note.get('acknowledged_revision')}, now "
            f"serving revision {note.get('found_revision')} ({note.get('reason')}); remove "
            "the note from quarantine/ once the loss is dealt with"
        )
    except (OSError, ValueError, AttributeError):
        return "rolled back (the note in quarantine/ is unreadable)"


def _check_file(
    codec: SnapshotCodec, item: VerifyItem, *, marks: bool, fs: _fs.Beneath
) -> str | None:
    assert item.path is not None
    mark = None
    if item.generation == 0 and marks:
        mark_path = _mark_path(item.path)
        try:
            mark = hwm.read(codec.keyring, item.session_id, mark_path, fs=fs)
        except OSError as exc:
            return f"high-water mark could not be read ({exc.strerror})"
    try:
        blob = read_file(item.path, fs=fs)
    except OSError as exc:
        return f"could not be read ({exc.strerror})"
    if blob is None:
        return None  # gone meanwhile: nothing to check
    reason = check_blob(codec, blob, item.session_id)
    if reason is not None and "not in the keyring" in reason:
        with contextlib.suppress(IntegrityError):
            key_id = parse_header(blob).key_id
            if key_id_damaged(codec, blob, key_id):
                reason = "snapshot is damaged (its key id bytes); the keyring is not the cause"
    if reason is None and item.generation == 0:
        reason = _check_journal(codec, blob, item.session_id, journal_path(item.path), mark, fs=fs)
    elif reason is not None and mark is not None and mark.revision is not None:
        reason += f"; acknowledged revision {mark.revision} (a backup may hold an older one)"
    if reason is None and mark is not None:
        reason = _check_mark(mark)
    return reason


def _check_mark(mark: hwm.Mark) -> str | None:
    if not mark.present:
        return "high-water mark is missing (a rollback of this session would go unseen)"
    if mark.damaged or mark.revision is None:
        return "high-water mark is damaged"
    return None


def _check_journal(
    codec: SnapshotCodec,
    blob: bytes,
    session_id: str,
    path: str,
    mark: hwm.Mark | None,
    *,
    fs: _fs.Beneath,
) -> str | None:
    """Why the journal extending the snapshot *blob* is bad, or None (also: no journal)."""
    try:
        data = read_file(path, fs=fs)
    except OSError as exc:
        return f"journal could not be read ({exc.strerror})"
    base = journal.snapshot_tag(blob)
    snap = codec.open(blob, expected_session_id=session_id)
    _, scan = journal.scan_journal(codec, data or b"", base_tag=base, session_id=session_id)
    found = scan.records[-1].info.revision if scan.records else snap.info.revision
    acknowledged = None if mark is None else mark.revision
    if acknowledged is not None and found < acknowledged:
        why = "" if scan.problem is None else f" ({scan.problem.message})"
        return (
            f"state went backwards: acknowledged revision {acknowledged}, the files hold "
            f"revision {found}{why}: {acknowledged - found} acknowledged revision(s) lost"
        )
    if scan.problem is not None and acknowledged is None and not scan.incomplete:
        return f"journal: {scan.problem.message}"
    try:
        if scan.records:
            journal.replay(snap.session(), scan.records)
    except IntegrityError as exc:
        return f"journal: {exc.message}"
    return None

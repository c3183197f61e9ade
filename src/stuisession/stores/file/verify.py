"""Verification of a file store's files: every snapshot, backup and journal.

Reads only: a bad file is reported, never repaired or moved.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from stuisession.codec import journal
from stuisession.codec.snapshot import SnapshotCodec
from stuisession.errors import IntegrityError
from stuisession.stores.base import Progress, VerifyItem, VerifyProblem, check_blob
from stuisession.stores.file.atomic import read_file
from stuisession.stores.file.layout import Layout, journal_path


def verify_items(layout: Layout) -> list[VerifyItem]:
    """Every snapshot and backup file of the store (names only are read)."""
    return [
        VerifyItem(sid, generation, path, identity)
        for sid, path, generation, identity in layout.snapshot_files()
    ]


def verify_files(
    codec: SnapshotCodec,
    layout: Layout,
    items: Iterable[VerifyItem],
    *,
    progress: Progress | None = None,
) -> Iterator[VerifyProblem]:
    """Check each file of *items* fully; yield the bad ones.

    An item without a path stands for the session's current snapshot file.
    Files that vanished meanwhile (a live bridge deleted or rotated them) are
    skipped. Hard-linked copies (same identity) are checked once.
    """
    done: dict[tuple[int, int], str | None] = {}
    for i, named in enumerate(items, 1):
        item = named
        if item.path is None:
            item = VerifyItem(item.session_id, 0, layout.paths(item.session_id).current)
        if item.identity in done:
            reason = done[item.identity]
        else:
            reason = _check_file(codec, item)
            if item.identity != (0, 0):
                done[item.identity] = reason
        if reason is not None:
            yield VerifyProblem(item.session_id, reason, item.path)
        if progress is not None:
            progress(i)


def _check_file(codec: SnapshotCodec, item: VerifyItem) -> str | None:
    assert item.path is not None
    try:
        blob = read_file(item.path)
    except OSError as exc:
        return f"could not be read ({exc.strerror})"
    if blob is None:
        return None  # gone meanwhile: nothing to check
    reason = check_blob(codec, blob, item.session_id)
    if reason is None and item.generation == 0:
        reason = _check_journal(codec, blob, item.session_id, journal_path(item.path))
    return reason


def _check_journal(codec: SnapshotCodec, blob: bytes, session_id: str, path: str) -> str | None:
    """Why the journal extending the snapshot *blob* is bad, or None (also: no journal)."""
    try:
        data = read_file(path)
    except OSError as exc:
        return f"journal could not be read ({exc.strerror})"
    base = journal.snapshot_tag(blob)
    try:
        records = journal.open_journal(codec, data or b"", base_tag=base, session_id=session_id)
        if not records:
            return None
        journal.replay(codec.open(blob, expected_session_id=session_id).session(), records)
    except IntegrityError as exc:
        return f"journal: {exc.message}"
    return None

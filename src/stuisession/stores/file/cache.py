"""The decoded-session cache of a file store: a bounded LRU of session heads.

A :class:`Head` is what the store knows of one session's files at one moment
(verified snapshot, journal position, current record, maybe the decoded
session); it stays valid while the files' ``(inode, size, mtime)`` match, so
several processes may share a directory.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict

import attrs

from stuisession.codec import journal
from stuisession.codec.snapshot import Snapshot
from stuisession.state.model import Session, SessionInfo

#: default bound of the decoded-session cache (estimated bytes): small, so that a
#: bridge with 10,000 stored sessions stays inside its 10 MB memory budget; a
#: bigger cache is opt-in (``FileStore(cache_bytes=)``, ``serve --cache-mb``)
DEFAULT_CACHE_BYTES = 4 * 1024 * 1024

FileKey = tuple[int, int, int]


def file_key(path: str) -> FileKey | None:
    """``(inode, size, mtime_ns)`` of *path* (not following a symlink), None if absent."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


@attrs.frozen
class Head:
    """What the store knows of one session's files at one moment.

    Valid while ``snap_key``/``jnl_key`` (inode, size, mtime) match the files.
    """

    snap_key: FileKey
    jnl_key: FileKey | None
    #: the verified snapshot the journal extends
    snapshot: Snapshot
    base_tag: bytes
    #: tag of the last valid record (the base tag when there is none)
    last_tag: bytes
    #: offset just past the last valid record; 0 when the journal holds no
    #: valid header for this snapshot (absent, empty, or left by a compaction)
    end: int
    records: int
    #: how many of the records change the state (the others only the record)
    updates: int
    info: SessionInfo
    #: the decoded current session, when it has been decoded
    session: Session | None
    #: estimated memory of this entry (:func:`stuisession.stores._cost.decoded_cost`
    #: of the blob and ``state_size`` when the session is decoded, else the blob)
    cost: int
    #: the journal's format version (a version-1 journal is compacted before an append)
    jnl_version: int = journal.VERSION
    #: JSON bytes of the decoded state (snapshot state plus journal payloads);
    #: None when the session is not decoded
    state_size: int | None = None

    @property
    def journal_bytes(self) -> int:
        return max(0, self.end - journal.HEADER_SIZE)


class HeadCache:
    """A bounded LRU of :class:`Head` by session id (thread-safe).

    Besides the *limit*, one slot holds the most recently stored head that is
    larger than the whole limit (a session of a few MB decoded): repeated updates
    of one big session do not decode it every time, and memory stays bounded by
    *limit* plus one such session. A limit of 0 turns the cache off entirely.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: OrderedDict[str, Head] = OrderedDict()
        self._used = 0
        self._big: tuple[str, Head] | None = None
        self._lock = threading.Lock()

    def get(self, sid: str) -> Head | None:
        with self._lock:
            head = self._items.get(sid)
            if head is not None:
                self._items.move_to_end(sid)
                return head
            if self._big is not None and self._big[0] == sid:
                return self._big[1]
            return None

    def put(self, sid: str, head: Head) -> None:
        with self._lock:
            old = self._items.pop(sid, None)
            if old is not None:
                self._used -= old.cost
            if self._big is not None and self._big[0] == sid:
                self._big = None
            if head.cost > self.limit:
                if self.limit > 0:
                    self._big = (sid, head)
                return
            self._items[sid] = head
            self._used += head.cost
            while self._used > self.limit:
                _, evicted = self._items.popitem(last=False)
                self._used -= evicted.cost

    def drop(self, sid: str) -> None:
        with self._lock:
            old = self._items.pop(sid, None)
            if old is not None:
                self._used -= old.cost
            if self._big is not None and self._big[0] == sid:
                self._big = None

    @property
    def used(self) -> int:
        with self._lock:
            return self._used + (0 if self._big is None else self._big[1].cost)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items) + (self._big is not None)

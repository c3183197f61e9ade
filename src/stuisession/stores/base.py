"""The pluggable storage interface and the store boundary.

A backend subclasses :class:`SessionStore` and implements a handful of small
byte-level primitives (as Django's ``SessionBase`` does):

* required: ``_get``, ``_put``, ``_delete`` and ``_ids``;
* optional: ``_get_head`` (read a prefix cheaply), ``_client_ids`` (a
  per-client index), ``_recover`` (fall back to a backup) and
  ``new_session_id`` (shape ids for an index).

Everything else -- sealing and verifying snapshots, compare-and-swap
semantics, listing, expiry, statistics, verification -- is built on them here,
so every backend behaves the same (the conformance suite in
``tests/test_store_conformance.py`` checks that). A backend may also override
a public method, but only to do the same thing faster or with its own
representation, never to change what it returns; those that do, and why:

* the file store overrides ``load``, ``load_snapshot``, ``load_info``,
  ``save``, ``save_info`` and ``create`` for its journal of deltas (a session
  is its snapshot plus journal records) and its client index markers, and
  ``read_snapshot``, ``session_rows`` and ``verify_items``/``verify`` to include
  the journal and the backup files;
* the Redis store overrides ``iter_infos``, ``list_by_client``,
  ``statistics`` and ``session_rows`` to read heads in pipelined batches from
  its indexes.

Code outside ``stores/`` (admin, CLI, service) uses only the public methods
below; it never calls a primitive nor checks a concrete store class.

Stores know nothing of JSON commands; they move sealed snapshots.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Protocol

import attrs

from stuisession import _json
from stuisession.codec.snapshot import Snapshot, SnapshotCodec
from stuisession.errors import (
    ConflictError,
    IntegrityError,
    SessionError,
    SessionNotFound,
    StateTooLarge,
)
from stuisession.ids import check_client_id, check_session_id, new_session_id
from stuisession.keys import Keyring
from stuisession.state.forms import to_wire_dict
from stuisession.state.model import Session, SessionInfo, SessionState
from stuisession.state.updates import StateUpdate
from stuisession.stores._notices import ChangeNotices

#: what a change notice may say happened to a session (``docs/notifications.md``)
CHANGE_EVENTS = frozenset(
    {"created", "updated", "context_saved", "closed", "rotated", "expired", "deleted"}
)


@attrs.frozen
class ChangeEvent:
    """A hint that a session changed: which one, what happened, its new revision.

    Carries nothing of the state. ``lineage`` is the session record's lineage
    when the record has one (None otherwise). Delivered to change listeners
    after the write committed (:meth:`SessionStore.announce`).
    """

    session_id: str
    event: str
    revision: int
    lineage: str | None = None

    @classmethod
    def of(cls, info: SessionInfo, event: str) -> ChangeEvent:
        """The notice for *info* as just committed."""
        lineage = getattr(info, "lineage", None)  # the record field of issue 14, once merged
        return cls(info.session_id, event, info.revision, None if lineage is None else str(lineage))

    def to_json(self) -> bytes:
        """The compact JSON form used between processes (Redis PUBLISH)."""
        doc: dict[str, object] = {"s": self.session_id, "e": self.event, "r": self.revision}
        if self.lineage is not None:
            doc["l"] = self.lineage
        return _json.dumps(doc)

    @classmethod
    def from_json(cls, data: bytes) -> ChangeEvent | None:
        """Parse :meth:`to_json` output; None for anything malformed (never raises)."""
        try:
            doc = _json.loads(data)
            sid, event, rev = doc["s"], doc["e"], doc["r"]
            lineage = doc.get("l")
        except Exception:
            return None
        if not (isinstance(sid, str) and event in CHANGE_EVENTS) or type(rev) is not int:
            return None
        if lineage is not None and not isinstance(lineage, str):
            return None
        return cls(sid, event, rev, lineage)


#: a change listener: called once per committed change, on the writer's (or a feed) thread
ChangeListener = Callable[[ChangeEvent], None]


@attrs.frozen
class StoreStatistics:
    """Counts over a whole store."""

    total_sessions: int
    active_sessions: int
    clients: int
    stored_bytes: int | None = None


class AuditAnchorSource(Protocol):
    """What a store asks the audit log when it records an anchor (an ``AuditLog``)."""

    def anchor(self) -> tuple[int, str] | None:
        """``(seq, mac hex)`` of the log's last line known, or None (no line yet)."""

    def holds(self, seq: int, mac_prefix: str) -> bool | None:
        """Whether line *seq* of the log has a mac starting with *mac_prefix*
        (None: not known without reading the log)."""


@attrs.frozen
class AuditAnchors:
    """The audit log positions a store recorded (:meth:`SessionStore.audit_anchors`).

    ``anchors``: ``(seq, first 16 hex digits of that line's mac, where)`` per
    record holding one (``where``: the file, for messages); ``damaged``:
    ``(where, reason)`` of records whose anchor can not be read.
    """

    anchors: tuple[tuple[int, str, str], ...] = ()
    damaged: tuple[tuple[str, str], ...] = ()


@attrs.frozen
class VerifyItem:
    """One stored snapshot that :meth:`SessionStore.verify` checks."""

    session_id: str
    #: 0 for the current snapshot, N for the backup N generations old
    generation: int = 0
    #: the file holding it (file stores), None for other backends
    path: str | None = None
    #: (directory inode, inode): hard-linked copies are checked once; (0, 0): unknown
    identity: tuple[int, int] = (0, 0)


@attrs.frozen
class VerifyProblem:
    """One snapshot that failed verification."""

    session_id: str
    reason: str
    #: the file that failed (file stores), None for other backends
    path: str | None = None


#: called with the number of items done so far
Progress = Callable[[int], None]


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


def state_part_sizes(state: SessionState) -> dict[str, int]:
    """Encoded size in bytes of each part of *state* (to say which part is too big)."""
    return {k: len(_json.dumps(v)) for k, v in to_wire_dict(state).items()}


def check_snapshot_size(blob: bytes, max_size: int | None, state: SessionState) -> None:
    """:class:`StateTooLarge` (naming each part's size) if *blob* is over *max_size* bytes."""
    if max_size is not None and len(blob) > max_size:
        raise StateTooLarge(
            f"session snapshot would be {len(blob)} bytes, over the limit of {max_size}",
            size=len(blob),
            limit=max_size,
            parts=state_part_sizes(state),
        )


def check_successor(new: SessionInfo, expected: SessionInfo) -> None:
    """Refuse a write whose record does not follow *expected* (a caller bug).

    A write that kept the version would let a later stale write-back succeed.
    """
    if new.session_id != expected.session_id or new.version <= expected.version:
        raise ConflictError(
            "a record write must increase the record version", current_revision=None
        )


class SessionStore(ChangeNotices, abc.ABC):
    """Base class of all session stores.

    Public methods validate ids and raise :mod:`stuisession.errors` exceptions:
    :class:`~stuisession.errors.SessionNotFound`,
    :class:`~stuisession.errors.ConflictError` (compare-and-swap lost),
    :class:`~stuisession.errors.IntegrityError` (a snapshot failed its check and
    could not be recovered) and :class:`~stuisession.errors.StorageError`.
    """

    codec: SnapshotCodec

    def __init__(self, codec: SnapshotCodec | None = None) -> None:
        self.codec = codec if codec is not None else SnapshotCodec(Keyring.generate())
        # per-client critical sections of this process (stores shared by several
        # processes override _client_lock with one that spans them)
        self._client_thread_locks = [threading.Lock() for _ in range(64)]
        self._init_notices()

    # -- backend primitives ---------------------------------------------------------
    @abc.abstractmethod
    def _get(self, session_id: str) -> bytes | None:
        """The stored snapshot of *session_id*, or None if there is none."""

    @abc.abstractmethod
    def _put(self, info: SessionInfo, blob: bytes, expected: SessionInfo | None) -> None:
        """Store *blob* for ``info.session_id``, atomically, as a compare-and-swap.

        With ``expected=None`` the session must not exist yet; otherwise the
        stored record's :attr:`~SessionInfo.cas_token` (version and lineage)
        must equal ``expected.cas_token`` (raise
        :class:`~stuisession.errors.SessionNotFound` if there is no session). On mismatch raise
        :class:`~stuisession.errors.ConflictError` (with ``current_revision``)
        and change nothing. A failed write must leave the previous snapshot intact.
        """

    @abc.abstractmethod
    def _delete(self, session_id: str, expected: SessionInfo | None = None) -> bool:
        """Remove the session; True if it existed.

        With *expected*, only if the stored record's ``cas_token`` still equals
        ``expected.cas_token`` (else nothing is removed and False is returned).
        """

    @contextlib.contextmanager
    def _client_lock(self, client_id: str) -> Iterator[None]:
        """Serialise count-and-create for *client_id* (this process only by default).

        Stores shared by several processes override it with a lock they all see.
        """
        stripe = int.from_bytes(hashlib.blake2b(client_id.encode(), digest_size=2).digest())
        with self._client_thread_locks[stripe % len(self._client_thread_locks)]:
            yield

    def _prepare_create(self, session: Session) -> None:
        """Called (under the client lock, when there is a limit) right before a create."""

    @abc.abstractmethod
    def _ids(self) -> Iterator[str]:
        """Every stored session id (order unspecified)."""

    def _get_head(self, session_id: str) -> bytes | None:
        """At least the header, key id, metadata and head tag of the snapshot.

        Backends that can read a prefix cheaply override this; the default reads all.
        """
        return self._get(session_id)

    def new_session_id(self, client_id: str) -> str:
        """A fresh id for a new session of *client_id*.

        Stores that index sessions by client may shape the id (e.g. pick its
        shard); it always has the format of :func:`stuisession.ids.new_session_id`.
        """
        return new_session_id()

    def _client_ids(self, client_id: str) -> Iterator[str] | None:
        """Session ids of *client_id* from an index, or None to fall back to a scan."""
        return None

    def _recover(self, session_id: str, error: IntegrityError) -> Snapshot:
        """Called when the stored snapshot fails its check.

        Backends with backups override this to fall back to the newest valid
        one (and set the bad snapshot aside). The default re-raises.
        """
        raise error

    # -- public API -----------------------------------------------------------------
    def create(
        self,
        session: Session,
        *,
        max_size: int | None = None,
        max_per_client: int | None = None,
        now: float | None = None,
    ) -> None:
        """Store a new session; :class:`ConflictError` if its id is taken.

        With *max_size*, a snapshot larger than that many bytes is refused with
        :class:`~stuisession.errors.StateTooLarge` and nothing is written.
        With *max_per_client*, the create is refused with
        :class:`~stuisession.errors.SessionError` (``limit``) when the client
        already has that many sessions active at *now* (Unix seconds; default
        the session's ``created_at``); count and create are one atomic step
        for every user of the store (threads, processes, bridges).
        """
        check_session_id(session.session_id)
        blob = self._encode(session, max_size)
        if max_per_client is None:
            self._prepare_create(session)
            self._put(session.info, blob, None)
            return
        at = session.created_at if now is None else now
        with self._client_lock(session.client_id):
            active = sum(1 for i in self.list_by_client(session.client_id) if i.is_active(at))
            if active >= max_per_client:
                raise SessionError(
                    f"Client has reached the limit of {max_per_client} active sessions",
                    limit=max_per_client,
                )
            self._prepare_create(session)
            self._put(session.info, blob, None)

    def create_within_limit(
        self, session: Session, *, limit: int, max_size: int | None = None
    ) -> None:
        """``create(session, max_size=max_size, max_per_client=limit)`` (an older name)."""
        self.create(session, max_size=max_size, max_per_client=limit)

    def load_snapshot(self, session_id: str) -> Snapshot:
        """The verified snapshot of *session_id* (state not yet decoded)."""
        check_session_id(session_id)
        blob = self._get(session_id)
        if blob is None:
            raise SessionNotFound("Session not found")
        try:
            return self.codec.open(blob, expected_session_id=session_id)
        except IntegrityError as exc:
            return self._recover(session_id, exc)

    def load(self, session_id: str) -> Session:
        """The full session; :class:`SessionNotFound` if there is none."""
        return self.load_snapshot(session_id).session()

    def load_info(self, session_id: str) -> SessionInfo:
        """The session's record, verified by its head tag (the state is not read)."""
        check_session_id(session_id)
        head = self._get_head(session_id)
        if head is None:
            raise SessionNotFound("Session not found")
        try:
            return self.codec.read_info(head, expected_session_id=session_id)
        except IntegrityError as exc:
            return self._recover(session_id, exc).info

    def save(
        self,
        session: Session,
        *,
        expected: SessionInfo,
        max_size: int | None = None,
        update: StateUpdate | None = None,
    ) -> None:
        """Replace the stored session if its record is still *expected* (the one read).

        The compare-and-swap is on the record's version and lineage, which
        every write changes: a write based on any older read fails with
        :class:`ConflictError`. *session* must have a higher version than
        *expected* (every :mod:`~stuisession.state.lifecycle` transition bumps it).
        *max_size* as for :meth:`create`. *update*, when given, is the change
        that turned *expected* into *session*: a store with a journal records
        it instead of the whole state (this one ignores it).
        """
        check_session_id(session.session_id)
        check_successor(session, expected)
        self._put(session.info, self._encode(session, max_size), expected)

    def _encode(self, session: Session, max_size: int | None) -> bytes:
        blob = self.codec.encode(session)
        check_snapshot_size(blob, max_size, session.state)
        return blob

    def save_info(self, snapshot: Snapshot, info: SessionInfo, *, expected: SessionInfo) -> None:
        """Replace only the record of a session (e.g. its access time), keeping the state.

        A compare-and-swap as for :meth:`save`.
        """
        check_successor(info, expected)
        self._put(info, self.codec.rewrite_info(snapshot, info), expected)

    def delete(self, session_id: str, *, expected: SessionInfo | None = None) -> bool:
        """Remove a session and everything kept for it; True if it was removed.

        With *expected*, only if its record is still that one (same version and
        lineage): the sweep deletes only what is still expired at the version it read.
        """
        check_session_id(session_id)
        return self._delete(session_id, expected)

    def iter_infos(self) -> Iterator[SessionInfo]:
        """Every readable session record. Unreadable snapshots are skipped."""
        for sid in self._ids():
            try:
                yield self.load_info(sid)
            except (SessionNotFound, IntegrityError):
                continue

    def list_by_client(self, client_id: str) -> list[SessionInfo]:
        """The records of *client_id*'s sessions, oldest first."""
        check_client_id(client_id)
        ids = self._client_ids(client_id)
        infos: list[SessionInfo] = []
        if ids is None:
            infos = [i for i in self.iter_infos() if i.client_id == client_id]
        else:
            for sid in ids:
                try:
                    info = self.load_info(sid)
                except (SessionNotFound, IntegrityError):
                    continue
                if info.client_id == client_id:
                    infos.append(info)
        infos.sort(key=lambda i: (i.created_at, i.session_id))
        return infos

    def iter_expired(self, now: float) -> Iterator[SessionInfo]:
        """Records of sessions that are expired at *now* (or closed)."""
        for info in self.iter_infos():
            if not info.is_active(now):
                yield info

    def statistics(self, now: float) -> StoreStatistics:
        """Counts over the whole store."""
        total = active = 0
        clients: set[str] = set()
        for info in self.iter_infos():
            total += 1
            if info.is_active(now):
                active += 1
                clients.add(info.client_id)
        return StoreStatistics(total_sessions=total, active_sessions=active, clients=len(clients))

    # -- the store boundary: what admin tools, the CLI and the service use -------------
    @property
    def local_directory(self) -> Path | None:
        """The local directory the store keeps its files in, None if it has none.

        Tools put files that belong with the store there (e.g. ``audit.log``).
        """
        return None

    def ids(self) -> Iterator[str]:
        """Every stored session id, readable or not (order unspecified).

        Sweeps count what they examine by these ids, so a snapshot that fails
        its check is still counted (``load_info`` then raises for it).
        """
        return self._ids()

    def raw_snapshot(self, session_id: str) -> bytes | None:
        """The stored snapshot bytes of *session_id* as they are, None if there are none.

        Not verified, not recovered, no journal applied: for tools that look
        at the stored form (which key sealed it, its size).
        """
        check_session_id(session_id)
        return self._get(session_id)

    def read_snapshot(self, session_id: str) -> Snapshot:
        """The verified snapshot of *session_id*'s current state, read without side effects.

        Unlike :meth:`load_snapshot` nothing is written: a corrupt snapshot is
        not replaced by a backup (:class:`~stuisession.errors.IntegrityError`
        is raised instead) and a journal is not compacted.
        """
        blob = self.raw_snapshot(session_id)
        if blob is None:
            raise SessionNotFound("Session not found")
        return self.codec.open(blob, expected_session_id=session_id)

    def session_rows(
        self, client_id: str | None = None
    ) -> Iterator[tuple[SessionInfo, int | None]]:
        """``(record, stored bytes)`` of every readable session (of *client_id*).

        Only records are read (head tags verified), never states; unreadable
        snapshots are skipped (:meth:`verify` reports them). The size is None
        when the session vanished meanwhile.
        """
        infos: Iterable[SessionInfo] = (
            self.iter_infos() if client_id is None else self.list_by_client(client_id)
        )
        for info in infos:
            blob = self._get(info.session_id)
            yield info, None if blob is None else len(blob)

    def verify_items(self) -> list[VerifyItem]:
        """What :meth:`verify` checks by default: one item per stored snapshot.

        Stores with backups list those too (``generation`` > 0).
        """
        return [VerifyItem(sid) for sid in self._ids()]

    def verify(
        self,
        items: Iterable[VerifyItem] | None = None,
        *,
        progress: Progress | None = None,
    ) -> Iterator[VerifyProblem]:
        """Check *items* (default: :meth:`verify_items`) fully; yield the bad ones.

        The full check of :func:`check_blob` (tags, decryption, decompression,
        schema). Reads only: nothing is repaired or moved; items that vanished
        meanwhile are skipped. *progress* is called with the count done.
        """
        for i, item in enumerate(self.verify_items() if items is None else items, 1):
            blob = self._verify_read(item)
            if blob is not None:
                reason = check_blob(self.codec, blob, item.session_id)
                if reason is not None:
                    yield VerifyProblem(item.session_id, reason, item.path)
            if progress is not None:
                progress(i)

    def _verify_read(self, item: VerifyItem) -> bytes | None:
        """The stored blob :meth:`verify` checks for *item* (None: vanished meanwhile)."""
        return self._get(item.session_id)

    def anchor_audit(self, source: AuditAnchorSource | None) -> None:
        """Record the audit log's position (*source*) with every acknowledged write.

        The audit log can then not be rolled back unseen without putting back
        old copies of the records of every session written since
        (``docs/security.md``, "Audit anchors"). The default: ignored (a store
        with nowhere to keep it). A *source* that raises or returns None
        leaves the record's anchor as it was; the write goes on.
        """

    def audit_anchors(self) -> AuditAnchors:
        """The audit anchors the store holds (default: none); reads only."""
        return AuditAnchors()

    def close(self) -> None:
        """Release resources (connections, file handles)."""

    def __enter__(self) -> SessionStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

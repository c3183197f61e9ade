"""The session service: policy applied to a store.

This layer sits between the protocol and the store. It knows the rules
(limits, expiry, who may touch what, how an update is applied) and nothing of
JSON envelopes or sockets; it raises :mod:`stuisession.errors` exceptions that
the protocol layer turns into error responses.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterator
from typing import Any

import attrs

from . import lifecycle
from .clock import Clock, SystemClock
from .codec import Snapshot
from .errors import (
    AccessDenied,
    ConflictError,
    IntegrityError,
    SessionError,
    SessionExpired,
    SessionNotFound,
)
from .ids import check_client_id, check_session_id
from .model import Session, SessionInfo, SessionStatus
from .policy import Policy
from .state import Metadata, SessionState
from .stores.base import SessionStore
from .updates import StateUpdate, changes_since, check_rebase

log = logging.getLogger("stuisession.service")


@attrs.frozen
class Restored:
    """What a restore hands back: the session record and its verified snapshot."""

    info: SessionInfo
    snapshot: Snapshot


@attrs.frozen
class Statistics:
    """System-wide counts for ``get_session_statistics``."""

    total_sessions: int
    active_sessions: int
    active_clients: int


class SessionService:
    """Applies a :class:`Policy` to a :class:`SessionStore`.

    Thread-safe: several threads may call it at once; every change is a
    compare-and-swap on the session revision, retried on conflict.
    """

    def __init__(
        self, store: SessionStore, policy: Policy | None = None, *, clock: Clock | None = None
    ) -> None:
        self.store = store
        self.policy = policy or Policy()
        self.clock: Clock = clock or SystemClock()
        # serialises the limit check and the create of one client (in this process)
        self._create_locks = [threading.Lock() for _ in range(64)]

    # -- helpers --------------------------------------------------------------------
    def _now(self) -> float:
        return self.clock.now()

    def _check_allowed(self, client_id: str) -> None:
        if not self.policy.client_allowed(client_id):
            raise SessionError("Client is not allowed to use sessions")

    def _check_owner(self, info: SessionInfo, client_id: str | None) -> None:
        # A mismatch reads exactly like a missing session, so probing ids of
        # other clients reveals nothing.
        if client_id is not None and info.client_id != client_id:
            raise SessionNotFound("Session not found")
        if not self.policy.client_allowed(info.client_id):
            raise AccessDenied("Client is not allowed to use sessions")

    def _expired_by_retention(self, info: SessionInfo, now: float) -> bool:
        return now - info.last_accessed > self.policy.retention

    def _require_active(self, info: SessionInfo, now: float) -> None:
        if self._expired_by_retention(info, now):
            raise SessionExpired()
        lifecycle.require_active(info, now)

    # -- commands -------------------------------------------------------------------
    def create(self, client_id: str, *, metadata: Metadata | None = None) -> Session:
        """Create a session for *client_id* (limit and allow/deny lists apply)."""
        check_client_id(client_id)
        self._check_allowed(client_id)
        stripe = int.from_bytes(hashlib.blake2b(client_id.encode(), digest_size=2).digest())
        with self._create_locks[stripe % len(self._create_locks)]:
            now = self._now()
            active = [i for i in self.store.list_by_client(client_id) if i.is_active(now)]
            if len(active) >= self.policy.max_sessions_per_client:
                raise SessionError(
                    f"Client has reached the limit of {self.policy.max_sessions_per_client} "
                    "active sessions",
                    limit=self.policy.max_sessions_per_client,
                )
            session = lifecycle.new_session(
                client_id,
                now=now,
                timeout=self.policy.session_timeout,
                absolute_lifetime=self.policy.absolute_lifetime,
                state=SessionState(metadata=metadata or Metadata()),
            )
            self.store.create(session, max_size=self.policy.max_snapshot_size)
        return session

    def restore(self, session_id: str, *, client_id: str | None = None) -> Restored:
        """Verify and return a session for its client, recording the access."""
        check_session_id(session_id)
        snap = self.store.load_snapshot(session_id)
        info = snap.info
        self._check_owner(info, client_id)
        now = self._now()
        self._require_active(info, now)
        if lifecycle.needs_touch(info, now, self.policy.touch_granularity):
            touched = lifecycle.touch(info, now)
            try:
                self.store.save_info(snap, touched, expected_revision=info.revision)
                info = touched
            except ConflictError:
                # someone changed the session meanwhile; their write refreshed the
                # access time, and this reader's view is still a committed revision
                pass
        return Restored(info=info, snapshot=snap)

    def info(self, session_id: str, *, client_id: str | None = None) -> SessionInfo:
        """The session's record (also for expired or closed sessions not yet swept)."""
        check_session_id(session_id)
        info = self.store.load_info(session_id)
        self._check_owner(info, client_id)
        return info

    def load(self, session_id: str, *, client_id: str | None = None) -> Session:
        """The full, active session (for read-only commands that need the state)."""
        check_session_id(session_id)
        session = self.store.load(session_id)
        self._check_owner(session, client_id)
        self._require_active(session, self._now())
        return session

    def changes_since(
        self, session_id: str, since_revision: int, *, client_id: str | None = None
    ) -> tuple[Session, list[dict[str, Any]] | None]:
        """The session and the operations since *since_revision* (None: not known any more)."""
        session = self.load(session_id, client_id=client_id)
        return session, changes_since(session.state, session.revision, since_revision)

    def update(
        self,
        session_id: str,
        update: StateUpdate,
        *,
        client_id: str | None = None,
        base_revision: int | None = None,
    ) -> Session:
        """Apply *update* to the current state and commit it with compare-and-swap.

        Without *base_revision* a lost race is retried on the fresh state, so
        every acknowledged update is applied on top of the latest one. With it,
        the update is applied only if no revision after *base_revision* touched
        the same data (see :func:`stuisession.updates.check_rebase`); otherwise
        :class:`ConflictError` carries the current revision.
        """
        check_session_id(session_id)
        for _ in range(self.policy.max_update_retries):
            current = self.store.load(session_id)
            self._check_owner(current, client_id)
            now = self._now()
            self._require_active(current, now)
            if base_revision is not None:
                check_rebase(current.state, current.revision, update, base_revision)
            new = lifecycle.with_state(
                current, update.apply(current.state, current.revision + 1), now
            )
            try:
                self.store.save(
                    new, expected_revision=current.revision, max_size=self.policy.max_snapshot_size
                )
            except ConflictError:
                continue
            return new
        raise ConflictError("Session is being changed too often; retry the update")

    def close(self, session_id: str, *, client_id: str | None = None) -> SessionInfo:
        """Close a session (idempotent: closing a closed session succeeds)."""
        check_session_id(session_id)
        for _ in range(self.policy.max_update_retries):
            current = self.store.load(session_id)
            self._check_owner(current, client_id)
            if current.status is SessionStatus.CLOSED:
                return current.info
            closed = lifecycle.close(current, self._now())
            try:
                self.store.save(closed, expected_revision=current.revision)
            except ConflictError:
                continue
            return closed.info
        raise ConflictError("Session is being changed too often; retry closing it")

    def list_client(self, client_id: str) -> list[SessionInfo]:
        """The client's sessions that are not closed (expired ones until swept)."""
        check_client_id(client_id)
        return [
            i for i in self.store.list_by_client(client_id) if i.status is not SessionStatus.CLOSED
        ]

    def statistics(self) -> Statistics:
        """System-wide counts."""
        stats = self.store.statistics(self._now())
        return Statistics(
            total_sessions=stats.total_sessions,
            active_sessions=stats.active_sessions,
            active_clients=stats.clients,
        )

    def iter_sweepable(self) -> Iterator[SessionInfo]:
        """Records of sessions the sweep would delete now."""
        now = self._now()
        for info in self.store.iter_infos():
            if not info.is_active(now) or self._expired_by_retention(info, now):
                yield info

    def cleanup_expired(self) -> int:
        """Delete expired, closed and past-retention sessions; return how many."""
        removed = 0
        for info in self.iter_sweepable():
            try:
                if self.store.delete(info.session_id):
                    removed += 1
            except (
                SessionNotFound,
                IntegrityError,
            ):  # pragma: no cover - raced with another sweeper
                continue
        if removed:
            log.info("swept %d expired or closed sessions", removed)
        return removed


__all__ = ["Restored", "SessionService", "Statistics"]

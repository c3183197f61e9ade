"""State updates and closes: compare-and-swap writes on the session record.

Split out of :class:`~stuisession.service.core.SessionService`, whose
``update`` and ``close`` delegate here.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

import attrs

from stuisession.errors import ConflictError
from stuisession.service.access import require_active
from stuisession.service.credentials import Credentials
from stuisession.service.retry import AGAIN, cas_retry
from stuisession.state import lifecycle
from stuisession.state.deltas import check_rebase
from stuisession.state.model import Session, SessionInfo, SessionStatus
from stuisession.state.updates import StateUpdate
from stuisession.stores.base import ChangeEvent, SessionStore

if TYPE_CHECKING:  # pragma: no cover
    from stuisession.service.core import SessionService

#: applied request keys a session record keeps for durable deduplication
APPLIED_KEYS = 16


def announcing(store: SessionStore, info: SessionInfo, event: str) -> AbstractContextManager[None]:
    """Announce *event* on *info* to watchers once the write in the block committed.

    A hint only (docs/notifications.md); nothing is done without listeners.
    """
    if not store.has_change_listeners:
        return contextlib.nullcontext()
    return store.announcing(ChangeEvent.of(info, event))


def update(
    service: SessionService,
    session_id: str,
    change: StateUpdate,
    creds: Credentials,
    *,
    base_revision: int | None,
    request_key: str | None,
) -> Session:
    """See :meth:`SessionService.update`."""
    store, policy = service.store, service.policy

    def step() -> Session | object:
        current = service.access.load(session_id, creds)
        if request_key is not None:
            for key, revision in current.applied:
                if key == request_key:
                    return attrs.evolve(current, revision=revision)
        now = service.now()
        require_active(policy, current, now)
        if base_revision is not None:
            check_rebase(current.state, current.revision, change, base_revision)
        new = lifecycle.with_state(current, change.apply(current.state, current.revision + 1), now)
        service.state_guard.check(  # [limits hook] decoded state size
            session_id, current.revision, new.state, len(change.to_json()), new.revision
        )
        if request_key is not None:
            applied = (*current.applied, (request_key, new.revision))[-APPLIED_KEYS:]
            new = attrs.evolve(new, applied=applied)
        try:
            event = "updated" if change.counts_as_update else "context_saved"
            with announcing(store, new.info, event):
                store.save(new, expected=current, max_size=policy.max_snapshot_size, update=change)
        except ConflictError:
            return AGAIN
        if policy.audit_updates:
            service.audit_event("update", client_id=current.client_id, session_id=session_id)
        return new

    result = cas_retry(policy.max_update_retries, step, "the update")
    assert isinstance(result, Session)
    return result


def close(service: SessionService, session_id: str, creds: Credentials) -> SessionInfo:
    """See :meth:`SessionService.close`."""

    def step() -> SessionInfo | object:
        current = service.access.load(session_id, creds)
        if current.status is SessionStatus.CLOSED:
            return current.info
        closed = lifecycle.close(current, service.now())
        try:
            with announcing(service.store, closed.info, "closed"):
                service.store.save(closed, expected=current)
        except ConflictError:
            return AGAIN
        service.audit_event("close", client_id=current.client_id, session_id=session_id)
        return closed.info

    result = cas_retry(service.policy.max_update_retries, step, "closing it")
    assert isinstance(result, SessionInfo)
    return result


__all__ = ["APPLIED_KEYS", "announcing", "close", "update"]

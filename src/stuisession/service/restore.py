"""Restores: verify, authorize, record the access, and rotate the id when policy says.

Split out of :class:`~stuisession.service.core.SessionService`, whose
``restore`` delegates here.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import attrs

from stuisession.codec.snapshot import Snapshot
from stuisession.errors import ConflictError, IntegrityError, SessionNotFound, StorageError
from stuisession.service.access import require_active
from stuisession.service.credentials import CLIENT_SCOPE, Credentials, Denied
from stuisession.service.results import Restored
from stuisession.service.retry import AGAIN, cas_retry
from stuisession.service.updates import announcing
from stuisession.state import lifecycle
from stuisession.state.model import SessionInfo

if TYPE_CHECKING:  # pragma: no cover
    from stuisession.service.core import SessionService

log = logging.getLogger("stuisession.service")


def restore(service: SessionService, session_id: str, creds: Credentials) -> Restored:
    """See :meth:`SessionService.restore`."""
    try:
        snap = service.access.load_snapshot(session_id, creds)
        info = snap.info
        now = service.now()
        require_active(service.policy, info, now)
    except (SessionNotFound, IntegrityError) as exc:
        if not isinstance(exc, Denied):
            service.audit_event(
                "restore",
                client_id=creds.client_id,
                session_id=session_id,
                outcome="error",
                reason=str(exc.details.get("reason", exc.message)),
            )
        raise
    if service.policy.rotates_on_restore:
        return rotate_id(service, snap, now)
    if lifecycle.needs_touch(info, now, service.policy.touch_granularity):
        try:
            info = record_access(service, snap, now)
        except ConflictError:
            pass  # changed too often meanwhile: every one of those writes is newer
        except StorageError as exc:
            # recording the access is best effort: the session itself was read
            # intact (a full disk or read-only store must not block restores);
            # the idle expiry then counts from the last recorded access
            log.warning("could not record a session access: %s", exc.message)
    service.audit_event("restore", client_id=info.client_id, session_id=session_id)
    return Restored(info=info, snapshot=snap)


def record_access(service: SessionService, snap: Snapshot, now: float) -> SessionInfo:
    """Persist an access time as a compare-and-swap on the record version.

    A write-back of the record read before another write (a rotation, a
    close) fails its compare-and-swap and is redone on the fresh record,
    so it never undoes that write. Returns the record served.
    """
    store, granularity = service.store, service.policy.touch_granularity
    state = {"snap": snap}

    def step() -> SessionInfo | object:
        current = state["snap"]
        info = current.info
        if not info.is_active(now) or not lifecycle.needs_touch(info, now, granularity):
            return info  # closed meanwhile, or someone else recorded the access
        touched = lifecycle.touch(info, now)
        try:
            store.save_info(current, touched, expected=info)
        except ConflictError:
            state["snap"] = store.load_snapshot(info.session_id)
            return AGAIN
        return touched

    result = cas_retry(service.policy.max_update_retries, step, "recording the access")
    assert isinstance(result, SessionInfo)
    return result


def rotate_id(service: SessionService, snap: Snapshot, now: float) -> Restored:
    """Move the session to a new id with a new resume token; the old id stops working."""
    store = service.store
    old = snap.session()
    new = attrs.evolve(
        lifecycle.touch(old, now),
        session_id=store.new_session_id(old.client_id),
        token_generation=0,
        applied=(),
    )
    # the new record exists before the old one goes: a crash never loses the session
    store.create(new)
    try:
        closed = lifecycle.close(old, now)
        with announcing(store, closed.info, "rotated"):
            store.save(closed, expected=old)
    except ConflictError:
        store.delete(new.session_id)
        raise
    store.delete(old.session_id)
    service.audit_event(
        "restore",
        client_id=old.client_id,
        session_id=new.session_id,
        reason="session id rotated",
    )
    return Restored(
        info=new.info,
        snapshot=store.load_snapshot(new.session_id),
        resume_token=service.authority.issue(new.client_id, new.session_id),
        rotated=True,
        # the holder of the session's token is its client: refresh its client token
        client_token=service.authority.issue(new.client_id, CLIENT_SCOPE),
    )


__all__ = ["record_access", "restore", "rotate_id"]

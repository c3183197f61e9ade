"""Credential rotation and subscription (watch) tokens.

Split out of :class:`~stuisession.service.core.SessionService`, whose
``rotate_token``, ``watch`` and ``check_watch`` delegate here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stuisession.errors import AccessDenied, ConflictError, IntegrityError, SessionNotFound
from stuisession.service.access import require_active
from stuisession.service.credentials import Credentials
from stuisession.service.retry import AGAIN, cas_retry
from stuisession.service.updates import announcing
from stuisession.state import lifecycle
from stuisession.state.model import SessionInfo

if TYPE_CHECKING:  # pragma: no cover
    from stuisession.service.core import SessionService


def rotate_token(
    service: SessionService, session_id: str, creds: Credentials
) -> tuple[SessionInfo, str]:
    """See :meth:`SessionService.rotate_token`."""

    def step() -> tuple[SessionInfo, str] | object:
        snap = service.access.load_snapshot(session_id, creds)
        now = service.now()
        require_active(service.policy, snap.info, now)
        info = lifecycle.revise(snap.info, token_generation=snap.info.token_generation + 1)
        try:
            with announcing(service.store, info, "rotated"):
                service.store.save_info(snap, info, expected=snap.info)
        except ConflictError:
            return AGAIN
        service.audit_event("token_rotation", client_id=info.client_id, session_id=session_id)
        token = service.authority.issue(
            info.client_id, session_id, generation=info.token_generation
        )
        return info, token

    result = cas_retry(service.policy.max_update_retries, step, "the rotation")
    assert isinstance(result, tuple)
    return result


def check_watch(service: SessionService, token: bytes | str) -> SessionInfo:
    """See :meth:`SessionService.check_watch`."""
    session_id, generation = service.subscriptions.open(token)
    try:
        info = service.store.load_info(session_id)
    except (SessionNotFound, IntegrityError):
        raise AccessDenied("invalid subscription token") from None
    if generation < info.token_generation or not info.is_active(service.now()):
        raise AccessDenied("invalid subscription token")
    return info


__all__ = ["check_watch", "rotate_token"]

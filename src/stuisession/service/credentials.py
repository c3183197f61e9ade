"""What a caller presents to the service, and the one uniform denial.

Split out of :mod:`stuisession.service.core` (which re-exports every name here).
"""

from __future__ import annotations

import attrs

from stuisession.errors import SessionNotFound, ValidationError, session_not_found
from stuisession.ids import is_valid_session_id
from stuisession.security.identity import Caller

#: the scope string client tokens are bound to (in place of a session id)
CLIENT_SCOPE = "client-scope"


class Denied(SessionNotFound):
    """A refusal already audited as ``deny``; on the wire identical to an unknown session."""


def check_session_ref(session_id: object) -> str:
    """*session_id* if it may name one of our sessions.

    :class:`ValidationError` (upstream ``SessionError``) when it is not a string; the
    one :func:`session_not_found` reply when it is a string in any other format (an
    upstream client may hold an id another backend issued: it must fall back to
    ``create_session``).
    """
    if not isinstance(session_id, str):
        raise ValidationError("session_id must be a string", field="session_id")
    if not is_valid_session_id(session_id):
        raise session_not_found()
    return session_id


@attrs.frozen
class Credentials:
    """What a caller presents besides the session id."""

    client_id: str | None = None
    resume_token: str | None = None
    client_token: str | None = None
    #: who the transport says is calling (default: an unauthenticated caller)
    caller: Caller = attrs.field(factory=Caller.anonymous)

    @property
    def identified(self) -> bool:
        """True when the caller claims an identity (then errors must not reveal existence)."""
        return (
            self.client_id is not None
            or self.resume_token is not None
            or self.caller.client_ids is not None
        )


ANONYMOUS = Credentials()

__all__ = ["ANONYMOUS", "CLIENT_SCOPE", "Credentials", "Denied", "check_session_ref"]

"""What the service's commands hand back.

Split out of :mod:`stuisession.service.core` (which re-exports every name here).
"""

from __future__ import annotations

import attrs

from stuisession.codec.snapshot import Snapshot
from stuisession.state.model import Session, SessionInfo


@attrs.frozen
class Restored:
    """What a restore hands back: the session record and its verified snapshot."""

    info: SessionInfo
    snapshot: Snapshot
    #: a new resume token when the session id was rotated (strict mode)
    resume_token: str | None = None
    #: True when the session got a new id
    rotated: bool = False
    #: a refreshed client token (strict mode, with a rotation)
    client_token: str | None = None


@attrs.frozen
class Created:
    """A new session and the credentials issued with it."""

    session: Session
    resume_token: str
    #: None when the caller did not prove it is this client (the client id had
    #: sessions already and neither a client token nor a bound key was presented)
    client_token: str | None


@attrs.frozen
class Statistics:
    """System-wide counts for ``get_session_statistics``."""

    total_sessions: int
    active_sessions: int
    active_clients: int


__all__ = ["Created", "Restored", "Statistics"]

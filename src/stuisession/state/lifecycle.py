"""Every session state transition, in one place (as h11 keeps its ``_state.py``).

Each function takes a session and returns a new one; none does I/O. The
service layer decides *when* to call them and stores the result with a
compare-and-swap on ``revision``.

Rules:

- ``revision`` is incremented by every committed change of state or status
  (:func:`with_state`, :func:`close`, :func:`expire`). Refreshing the access
  time (:func:`touch`) is not a change of the session and keeps the revision.
- ``version`` is incremented by every transition here (every write of the
  record): stores compare it, so a write based on a stale read always fails.
- Only an ``ACTIVE``, unexpired session may be touched or changed.
- ``CLOSED`` and ``EXPIRED`` are terminal.
"""

from __future__ import annotations

from typing import Any, TypeVar

import attrs

from stuisession.errors import SessionClosed, SessionExpired
from stuisession.ids import new_lineage, new_session_id
from stuisession.state.model import Session, SessionInfo, SessionState, SessionStatus

_Info = TypeVar("_Info", bound=SessionInfo)


def new_session(
    client_id: str,
    *,
    now: float,
    timeout: int,
    absolute_lifetime: int | None = None,
    state: SessionState | None = None,
    session_id: str | None = None,
) -> Session:
    """A fresh ``ACTIVE`` session at revision 1."""
    return Session(
        session_id=session_id or new_session_id(),
        client_id=client_id,
        created_at=now,
        last_accessed=now,
        last_modified=now,
        expires_at=now + timeout,
        timeout=timeout,
        revision=1,
        version=1,
        lineage=new_lineage(),
        status=SessionStatus.ACTIVE,
        absolute_expires_at=None if absolute_lifetime is None else now + absolute_lifetime,
        state=state or SessionState(),
    )


def require_active(session: SessionInfo, now: float) -> None:
    """Raise :class:`SessionClosed` or :class:`SessionExpired` unless the session is usable."""
    if session.status is SessionStatus.CLOSED:
        raise SessionClosed()
    if session.is_expired(now):
        raise SessionExpired()


def _next_record(session: SessionInfo) -> dict[str, Any]:
    """The version (and, for a record from before versions, a lineage) of the next write."""
    # a record without a lineage gets one on its first write: naming its
    # history is not a rollback, and no earlier pair carried this new id
    return {"version": session.version + 1, "lineage": session.lineage or new_lineage()}


def touch(session: _Info, now: float) -> _Info:
    """Record an access: slides the idle expiry; the revision does not change."""
    require_active(session, now)
    # a clock that jumped backwards must not shorten a session's life
    now = max(now, session.last_accessed)
    return attrs.evolve(
        session, last_accessed=now, expires_at=now + session.timeout, **_next_record(session)
    )


def revise(session: _Info, **changes: Any) -> _Info:
    """*session* with *changes* to its record (e.g. ``token_generation``), version bumped."""
    return attrs.evolve(session, **_next_record(session), **changes)


def relineage(session: _Info) -> _Info:
    """*session* on a new history: after a rollback to an older state (recovery, import)."""
    return attrs.evolve(session, version=session.version + 1, lineage=new_lineage())


def needs_touch(session: SessionInfo, now: float, granularity: float) -> bool:
    """True when the stored access time is older than *granularity* seconds.

    Persisting every access would turn each restore into a durable write; the
    idle expiry only needs to be right to within *granularity*.
    """
    return now - session.last_accessed >= granularity


def with_state(session: Session, state: SessionState, now: float) -> Session:
    """Commit a new state: touches the session and increments the revision."""
    require_active(session, now)
    now = max(now, session.last_accessed, session.last_modified)
    return attrs.evolve(
        session,
        state=state,
        last_accessed=now,
        last_modified=now,
        expires_at=now + session.timeout,
        revision=session.revision + 1,
        **_next_record(session),
    )


def close(session: Session, now: float) -> Session:
    """``ACTIVE`` -> ``CLOSED`` (terminal)."""
    if session.status is SessionStatus.CLOSED:
        raise SessionClosed()
    if session.status is SessionStatus.EXPIRED:
        raise SessionExpired()
    now = max(now, session.last_modified)
    return attrs.evolve(
        session,
        status=SessionStatus.CLOSED,
        last_modified=now,
        revision=session.revision + 1,
        **_next_record(session),
    )


def expire(session: Session, now: float) -> Session:
    """Mark an expired session ``EXPIRED`` (terminal)."""
    if session.status is SessionStatus.CLOSED:
        raise SessionClosed()
    if session.status is SessionStatus.EXPIRED:
        raise SessionExpired()
    return attrs.evolve(
        session,
        status=SessionStatus.EXPIRED,
        last_modified=max(now, session.last_modified),
        revision=session.revision + 1,
        **_next_record(session),
    )

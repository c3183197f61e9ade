"""The session data model: attrs classes with validators.

The state itself (:class:`~stuisession.state.SessionState`) lives in
:mod:`stuisession.state`. ``Session`` is immutable (frozen attrs); every change produces a new value
through the transitions in :mod:`stuisession.lifecycle`. ``SessionInfo`` is
the same record without its state: what stores keep in the snapshot header so
listing and expiry never need to decompress a state.
"""

from __future__ import annotations

import enum
import math
from typing import Any

import attrs

from stuisession.ids import check_client_id, check_session_id
from stuisession.state.schema import SessionState

#: The schema version of :class:`SessionState` written by this release.
SCHEMA_VERSION = 2


class SessionStatus(enum.Enum):
    """Lifecycle status. Stored as its string value."""

    ACTIVE = "active"
    CLOSED = "closed"
    EXPIRED = "expired"


def _validate_session_id(_inst: Any, _attr: Any, value: str) -> None:
    check_session_id(value)


def _validate_client_id(_inst: Any, _attr: Any, value: str) -> None:
    check_client_id(value)


def _non_negative(inst: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must not be negative")


def _applied(value: Any) -> tuple[tuple[str, int], ...]:
    return tuple((str(k), int(r)) for k, r in value)


@attrs.frozen
class SessionInfo:
    """A session's record without its state (kept readable for listing and expiry)."""

    session_id: str = attrs.field(validator=_validate_session_id)
    client_id: str = attrs.field(validator=_validate_client_id)
    created_at: float = attrs.field(validator=_non_negative)
    last_accessed: float
    last_modified: float
    expires_at: float
    timeout: int = attrs.field(validator=_non_negative)
    revision: int = attrs.field(validator=_non_negative)
    status: SessionStatus = SessionStatus.ACTIVE
    #: hard cap on the session's life regardless of activity (None: no cap)
    absolute_expires_at: float | None = None
    #: resume tokens of an older generation are revoked (strict mode)
    token_generation: int = 0
    #: record version: bumped by EVERY write of the record (access times,
    #: rotations, closes, state changes), unlike ``revision`` (state and status
    #: only). Stores compare it, with ``lineage``, in every compare-and-swap.
    version: int = attrs.field(default=0, validator=_non_negative)
    #: the history ``revision`` belongs to: minted at creation and replaced on
    #: every rollback (recovery from a backup, import), so two different states
    #: never share a (lineage, revision) pair. "" for records written before it existed
    lineage: str = ""
    #: the last few applied request keys (digest of caller + request id +
    #: content) with the revision each produced: a resend is never applied twice
    applied: tuple[tuple[str, int], ...] = attrs.field(default=(), converter=_applied)

    @property
    def cas_token(self) -> tuple[int, str]:
        """What a compare-and-swap compares: the record version and its lineage."""
        return (self.version, self.lineage)

    def is_expired(self, now: float) -> bool:
        """True when the idle timeout or the absolute lifetime has passed."""
        if self.status is SessionStatus.EXPIRED:
            return True
        if self.absolute_expires_at is not None and now >= self.absolute_expires_at:
            return True
        return now >= self.expires_at

    def is_active(self, now: float) -> bool:
        """True when the session can be restored and updated."""
        return self.status is SessionStatus.ACTIVE and not self.is_expired(now)

    def time_until_expiry(self, now: float) -> int:
        """Whole seconds until expiry, never negative."""
        end = self.expires_at
        if self.absolute_expires_at is not None:
            end = min(end, self.absolute_expires_at)
        return max(0, math.ceil(end - now))


@attrs.frozen
class Session(SessionInfo):
    """One client session: its record plus its :class:`SessionState`."""

    state: SessionState = attrs.field(factory=SessionState)

    @classmethod
    def from_info(cls, info: SessionInfo, state: SessionState) -> Session:
        """The session with record *info* and *state*."""
        fields = {a.name: getattr(info, a.name) for a in attrs.fields(SessionInfo)}
        return cls(**fields, state=state)

    @property
    def info(self) -> SessionInfo:
        """This session's record without the state."""
        fields = {a.name: getattr(self, a.name) for a in attrs.fields(SessionInfo)}
        return SessionInfo(**fields)


__all__ = ["SCHEMA_VERSION", "Session", "SessionInfo", "SessionState", "SessionStatus"]

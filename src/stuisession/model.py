"""The session data model: attrs classes with validators.

``Session`` is immutable (frozen attrs); every change produces a new value
through the transitions in :mod:`stuisession.lifecycle`. ``SessionInfo`` is
the same record without its state: what stores keep in the snapshot header so
listing and expiry never need to decompress a state.
"""

from __future__ import annotations

import enum
import math
from typing import Any

import attrs

from .ids import check_client_id, check_session_id
from .jsonutil import check_json_value

#: The schema version of :class:`SessionState` written by this release.
SCHEMA_VERSION = 1


class SessionStatus(enum.Enum):
    """Lifecycle status. Stored as its string value."""

    ACTIVE = "active"
    CLOSED = "closed"
    EXPIRED = "expired"


def _validate_session_id(_inst: Any, _attr: Any, value: str) -> None:
    check_session_id(value)


def _validate_client_id(_inst: Any, _attr: Any, value: str) -> None:
    check_client_id(value)


def _json_object(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, dict):
        raise TypeError(f"{attribute.name} must be a JSON object")
    check_json_value(value, attribute.name)


def _str_to_str(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise TypeError(f"{attribute.name} must map strings to strings")


def _non_negative(inst: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must not be negative")


@attrs.frozen
class SessionState:
    """Everything a client gets back on restore (schema version 1).

    The attribute names are the upstream ``restore_session`` result keys, so
    the encoded state can be spliced into a restore reply unchanged.

    - ``session_state``: the open JSON object written by ``update_session_state``
      (upstream ``state_data``), returned verbatim.
    - ``workspace_context``: workspace variables and evaluation context
      (upstream shape: ``{"variables": [names]}``; extra keys kept).
    - ``inspector_state``: inspector configuration and selection
      (upstream shape: ``{"selected_object": id}``; extra keys kept).
    - ``object_registry``: object id -> description (print string).
    - ``preferences``: user settings.
    - ``metadata``: session metadata and counters.
    """

    session_state: dict[str, Any] = attrs.field(factory=dict, validator=_json_object)
    workspace_context: dict[str, Any] = attrs.field(factory=dict, validator=_json_object)
    inspector_state: dict[str, Any] = attrs.field(factory=dict, validator=_json_object)
    object_registry: dict[str, str] = attrs.field(factory=dict, validator=_str_to_str)
    preferences: dict[str, Any] = attrs.field(factory=dict, validator=_json_object)
    metadata: dict[str, Any] = attrs.field(factory=dict, validator=_json_object)


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

    @property
    def info(self) -> SessionInfo:
        """This session's record without the state."""
        fields = {a.name: getattr(self, a.name) for a in attrs.fields(SessionInfo)}
        return SessionInfo(**fields)

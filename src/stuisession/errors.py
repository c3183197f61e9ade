"""Exception hierarchy.

Every error raised by stuisession carries two strings that
:class:`~stuisession.ProtocolHandler` copies into an error reply:

- ``error_type``: always one of upstream STUI's four types (:data:`UPSTREAM_ERROR_TYPES`:
  ``SessionError``, ``SessionNotFound``, ``RuntimeError``, ``Error``), so an upstream
  client's "restore; on ``SessionNotFound`` create" flow works unchanged;
- ``error_code``: our finer code (``ValidationError``, ``Conflict``, ``RateLimited``, ...),
  an additive field for clients that want to tell the cases apart.

The mapping table is in ``docs/protocol.md`` ("Error types and codes").
"""

from __future__ import annotations

from typing import Any


class StuiSessionError(Exception):
    """Base class of all stuisession errors.

    ``details`` is a small JSON-serialisable mapping that is copied into the
    error response; it must never contain session contents or secrets.
    """

    #: upstream STUI's type (one of :data:`UPSTREAM_ERROR_TYPES`)
    error_type: str = "Error"
    #: our finer code (additive field ``error_code`` of an error reply)
    error_code: str = "Error"
    #: whether a client may retry the same request later and expect success
    retryable: bool = False

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details
        #: the id of the request this error answers, when known before dispatch
        self.request_id: str | int | None = None


class InternalError(StuiSessionError):
    """A bug: reported with upstream's ``RuntimeError`` type, never with request contents."""

    error_type = "RuntimeError"
    error_code = "InternalError"


class InvalidRequest(StuiSessionError):
    """The message is not a valid request envelope (bad JSON, missing ``id``/``command``)."""

    error_type = "Error"
    error_code = "InvalidRequest"


class MessageTooLarge(InvalidRequest):
    """The message exceeds the configured size limit."""

    error_type = "Error"
    error_code = "MessageTooLarge"


class UnknownCommand(InvalidRequest):
    """The ``command`` is not one this handler serves."""

    error_type = "Error"
    error_code = "UnknownCommand"


class ValidationError(StuiSessionError):
    """A parameter is missing, has the wrong type, or is out of range."""

    error_type = "SessionError"
    error_code = "ValidationError"


class StateTooLarge(ValidationError):
    """The session state would exceed the per-session size limit."""

    error_type = "SessionError"
    error_code = "StateTooLarge"


class SessionError(StuiSessionError):
    """Upstream's generic session-management failure (e.g. the per-client limit)."""

    error_type = "SessionError"
    error_code = "SessionError"


class SessionNotFound(StuiSessionError):
    """The session does not exist, or can not be brought back."""

    error_type = "SessionNotFound"
    error_code = "SessionNotFound"


class SessionExpired(SessionNotFound):
    """The session exists but has expired (idle timeout or absolute lifetime).

    Reported with upstream's ``SessionNotFound`` type so that upstream clients
    fall back to ``create_session``; ``details.reason`` is ``"expired"``.
    """

    error_type = "SessionNotFound"
    error_code = "SessionNotFound"

    def __init__(self, message: str = "Session expired", **details: Any) -> None:
        details.setdefault("reason", "expired")
        super().__init__(message, **details)


class SessionClosed(SessionNotFound):
    """The session was closed by its client."""

    error_type = "SessionNotFound"
    error_code = "SessionNotFound"

    def __init__(self, message: str = "Session closed", **details: Any) -> None:
        details.setdefault("reason", "closed")
        super().__init__(message, **details)


class ConflictError(StuiSessionError):
    """A compare-and-swap on the session revision failed: someone else wrote first."""

    error_type = "SessionError"
    error_code = "Conflict"
    retryable = True

    def __init__(self, message: str, *, current_revision: int | None = None, **details: Any):
        if current_revision is not None:
            details["current_revision"] = current_revision
        super().__init__(message, **details)
        self.current_revision = current_revision


class AccessDenied(StuiSessionError):
    """The caller may not act on this session or is not allowed to connect."""

    error_type = "SessionError"
    error_code = "AccessDenied"


class RateLimited(StuiSessionError):
    """Too many requests; ``details.retry_after`` says when to retry (seconds)."""

    error_type = "SessionError"
    error_code = "RateLimited"
    retryable = True


class StorageError(StuiSessionError):
    """The store could not complete an operation (I/O failure, lock timeout, backend down).

    The last good snapshot is untouched; the operation may be retried.
    """

    error_type = "RuntimeError"
    error_code = "StorageError"
    retryable = True


class IntegrityError(StuiSessionError):
    """A snapshot failed its integrity check (bad magic, truncated, wrong tag, wrong key)."""

    error_type = "RuntimeError"
    error_code = "IntegrityError"


class ConfigurationError(StuiSessionError):
    """The library was configured in an unsafe or inconsistent way."""

    error_type = "RuntimeError"
    error_code = "ConfigurationError"


class Busy(StuiSessionError):
    """The server is saturated; retry after a short delay."""

    error_type = "RuntimeError"
    error_code = "Busy"
    retryable = True


class UpstreamError(StuiSessionError):
    """The Pharo backend is missing, unreachable or too slow."""

    error_type = "RuntimeError"
    error_code = "UpstreamError"
    retryable = True


#: the four ``error_type`` values upstream STUI documents; every reply uses one of them
UPSTREAM_ERROR_TYPES = frozenset({"SessionError", "SessionNotFound", "RuntimeError", "Error"})
#: the message of every "no such session for you" reply: unknown, foreign, other-format ids
SESSION_NOT_FOUND_MESSAGE = "Session not found"


def session_not_found() -> SessionNotFound:
    """The one reply for a session the caller cannot have (unknown, foreign, or an id in
    another format): identical in message, code and (empty) details, so it leaks nothing."""
    return SessionNotFound(SESSION_NOT_FOUND_MESSAGE)


__all__ = [
    "SESSION_NOT_FOUND_MESSAGE",
    "UPSTREAM_ERROR_TYPES",
    "AccessDenied",
    "Busy",
    "ConfigurationError",
    "ConflictError",
    "IntegrityError",
    "InternalError",
    "InvalidRequest",
    "MessageTooLarge",
    "RateLimited",
    "SessionClosed",
    "SessionError",
    "SessionExpired",
    "SessionNotFound",
    "StateTooLarge",
    "StorageError",
    "StuiSessionError",
    "UnknownCommand",
    "UpstreamError",
    "ValidationError",
    "session_not_found",
]

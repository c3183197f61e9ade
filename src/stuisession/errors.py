"""Exception hierarchy.

Every error raised by stuisession carries an ``error_type``: the string that
:class:`~stuisession.ProtocolHandler` puts in the ``error_type`` field of an error
response. Upstream STUI defines ``SessionError``, ``SessionNotFound``,
``RuntimeError`` and ``Error``; the other types are additive extensions
(see ``docs/protocol.md``).
"""

from __future__ import annotations

from typing import Any


class StuiSessionError(Exception):
    """Base class of all stuisession errors.

    ``details`` is a small JSON-serialisable mapping that is copied into the
    error response; it must never contain session contents or secrets.
    """

    error_type: str = "Error"
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


class InvalidRequest(StuiSessionError):
    """The message is not a valid request envelope (bad JSON, missing ``id``/``command``)."""

    error_type = "InvalidRequest"


class MessageTooLarge(InvalidRequest):
    """The message exceeds the configured size limit."""

    error_type = "MessageTooLarge"


class UnknownCommand(InvalidRequest):
    """The ``command`` is not one this handler serves."""

    error_type = "UnknownCommand"


class ValidationError(StuiSessionError):
    """A parameter is missing, has the wrong type, or is out of range."""

    error_type = "ValidationError"


class StateTooLarge(ValidationError):
    """The session state would exceed the per-session size limit."""

    error_type = "StateTooLarge"


class SessionError(StuiSessionError):
    """Upstream's generic session-management failure (e.g. the per-client limit)."""

    error_type = "SessionError"


class SessionNotFound(StuiSessionError):
    """The session does not exist, or can not be brought back."""

    error_type = "SessionNotFound"


class SessionExpired(SessionNotFound):
    """The session exists but has expired (idle timeout or absolute lifetime).

    Reported with upstream's ``SessionNotFound`` type so that upstream clients
    fall back to ``create_session``; ``details.reason`` is ``"expired"``.
    """

    error_type = "SessionNotFound"

    def __init__(self, message: str = "Session expired", **details: Any) -> None:
        details.setdefault("reason", "expired")
        super().__init__(message, **details)


class SessionClosed(SessionNotFound):
    """The session was closed by its client."""

    error_type = "SessionNotFound"

    def __init__(self, message: str = "Session closed", **details: Any) -> None:
        details.setdefault("reason", "closed")
        super().__init__(message, **details)


class ConflictError(StuiSessionError):
    """A compare-and-swap on the session revision failed: someone else wrote first."""

    error_type = "Conflict"
    retryable = True

    def __init__(self, message: str, *, current_revision: int | None = None, **details: Any):
        if current_revision is not None:
            details["current_revision"] = current_revision
        super().__init__(message, **details)
        self.current_revision = current_revision


class AccessDenied(StuiSessionError):
    """The caller may not act on this session or is not allowed to connect."""

    error_type = "AccessDenied"


class RateLimited(StuiSessionError):
    """Too many requests; ``details.retry_after`` says when to retry (seconds)."""

    error_type = "RateLimited"
    retryable = True


class StorageError(StuiSessionError):
    """The store could not complete an operation (I/O failure, lock timeout, backend down).

    The last good snapshot is untouched; the operation may be retried.
    """

    error_type = "StorageError"
    retryable = True


class IntegrityError(StuiSessionError):
    """A snapshot failed its integrity check (bad magic, truncated, wrong tag, wrong key)."""

    error_type = "IntegrityError"


class ConfigurationError(StuiSessionError):
    """The library was configured in an unsafe or inconsistent way."""

    error_type = "ConfigurationError"


class Busy(StuiSessionError):
    """The server is saturated; retry after a short delay."""

    error_type = "Busy"
    retryable = True


class UpstreamError(StuiSessionError):
    """The Pharo backend is missing, unreachable or too slow."""

    error_type = "UpstreamError"
    retryable = True


__all__ = [
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
]

"""Typed shapes of the protocol's replies: one ``TypedDict`` per command's result.

Foundation module: imports nothing from the package, so the client, the
protocol handler and user code can all use it. The shapes follow
``docs/protocol.md``; every time field is an ISO-8601 UTC string with ``Z``
(``"2026-11-28T08:00:00Z"``), durations are whole seconds, ``revision`` counts
committed changes. Keys marked ``NotRequired`` appear only in some replies
(e.g. a strict-mode restore, or statistics answered through the bridge).

Use them to let a type checker catch a misspelt key::

    reply: SuccessReply = handler.handle(request)          # type: ignore[assignment]
    created: CreateSessionResult = client.open()            # SessionClient returns them
    created["sesion_id"]                                    # mypy: TypedDict has no key
"""

# no `from __future__ import annotations`: TypedDict reads NotRequired at runtime
from typing import Any, Literal, NotRequired, TypedDict

__all__ = [
    "ClearContextResult",
    "CloseSessionResult",
    "ConnectionSummary",
    "ContextSummaryResult",
    "CreateSessionResult",
    "ErrorReply",
    "ListClientSessionsResult",
    "LoadContextResult",
    "QueueStatistics",
    "Reply",
    "RestoreSessionResult",
    "RotateCredentialsResult",
    "SaveContextResult",
    "SessionInfoResult",
    "SessionListEntry",
    "SessionStatisticsResult",
    "SuccessReply",
    "UpdateSessionStateResult",
    "UpstreamErrorType",
]

#: the four error types upstream STUI clients know; every error reply carries one
UpstreamErrorType = Literal["SessionError", "SessionNotFound", "RuntimeError", "Error"]


class SuccessReply(TypedDict):
    """``{"id", "status": "success", "result", "timestamp"}``."""

    id: str | int | None
    status: Literal["success"]
    result: dict[str, Any]
    timestamp: str


class ErrorReply(TypedDict):
    """An error reply: never has ``result``.

    ``error_type`` is one of upstream's four types; ``error_code`` is the finer
    code (e.g. ``"RateLimited"``, ``"Conflict"``, ``"ValidationError"``) and
    ``details`` machine-readable facts (e.g. ``retry_after`` in seconds,
    ``current_revision``, ``field``, ``reason``).
    """

    id: str | int | None
    status: Literal["error"]
    error: str
    error_type: str
    error_code: NotRequired[str]
    details: NotRequired[dict[str, Any]]
    timestamp: str


#: any reply of the protocol
Reply = SuccessReply | ErrorReply


class CreateSessionResult(TypedDict):
    """``create_session``."""

    session_id: str
    client_id: str
    created_at: str
    timeout: int
    is_active: bool
    revision: int
    resume_token: str
    #: None when the client id had sessions and the caller did not prove it (issue 16)
    client_token: str | None


class RestoreSessionResult(TypedDict):
    """``restore_session``: the record, then the state's sections (see state-model.md)."""

    session_id: str
    client_id: str
    created_at: str
    last_modified: str
    timeout: int
    is_active: bool
    revision: int
    time_until_expiry: int
    delta: bool
    session_id_rotated: NotRequired[bool]
    resume_token: NotRequired[str]
    #: a fresh client token with a rotating restore (strict mode)
    client_token: NotRequired[str]
    session_state: NotRequired[dict[str, Any]]
    workspace_context: NotRequired[dict[str, Any]]
    inspector_state: NotRequired[dict[str, Any]]
    object_registry: NotRequired[dict[str, Any]]
    objects: NotRequired[dict[str, Any]]
    stale_objects: NotRequired[list[Any]]
    preferences: NotRequired[dict[str, Any]]
    metadata: NotRequired[dict[str, Any]]
    contexts: NotRequired[dict[str, Any]]
    changes: NotRequired[list[Any]]


class UpdateSessionStateResult(TypedDict):
    """``update_session_state``."""

    session_id: str
    last_modified: str
    session_state: dict[str, Any]
    update_successful: bool
    revision: int


class CloseSessionResult(TypedDict):
    """``close_session``."""

    session_id: str
    closed: bool
    revision: int


class SessionInfoResult(TypedDict):
    """``get_session_info``."""

    session_id: str
    client_id: str
    created_at: str
    last_modified: str
    timeout: int
    is_active: bool
    revision: int
    time_until_expiry: int
    is_expired: bool
    status: Literal["active", "closed", "expired"]
    last_accessed: str
    expires_at: str


class SessionListEntry(TypedDict):
    """One entry of ``list_client_sessions``."""

    session_id: str
    created_at: str
    last_modified: str
    timeout: int
    is_active: bool
    time_until_expiry: int
    revision: int


class ListClientSessionsResult(TypedDict):
    """``list_client_sessions``: oldest first; closed sessions are not listed."""

    client_id: str
    session_count: int
    sessions: list[SessionListEntry]


class ConnectionSummary(TypedDict):
    """One connection in the bridge's statistics (session ids are never listed)."""

    identity: str
    client_id: str | None
    connected_since: str
    last_seen: str
    idle_seconds: float
    requests: int
    sessions: int


class QueueStatistics(TypedDict):
    """The bridge's queued-bytes accounting (``bridge/budget.py``); sizes in bytes."""

    queued_bytes: int
    max_queued_bytes: int
    max_queued_bytes_per_connection: int
    #: connections dropped now (refused until idle)
    dropped_connections: int
    #: since start: connections dropped, requests refused, replies replaced by ``Busy``
    connections_dropped: int
    requests_refused: int
    replies_discarded: int


class SessionStatisticsResult(TypedDict):
    """``get_session_statistics``; the bridge adds the ``NotRequired`` keys."""

    total_sessions: int
    active_clients: int
    max_sessions_per_client: int
    default_timeout: int
    cleanup_interval: int
    active_sessions: int
    connected_clients: NotRequired[int]
    attached_sessions: NotRequired[int]
    connections: NotRequired[list[ConnectionSummary]]
    pending_requests: NotRequired[int]
    requests_served: NotRequired[int]
    uptime: NotRequired[int]
    upstream: NotRequired[bool]
    queues: NotRequired[QueueStatistics]


class RotateCredentialsResult(TypedDict):
    """``rotate_credentials``: every earlier resume token of the session is revoked."""

    session_id: str
    resume_token: str
    token_generation: int


class SaveContextResult(TypedDict):
    """``save_context``."""

    session_id: str
    tool_id: str
    saved: bool
    revision: int


class LoadContextResult(TypedDict):
    """``load_context``: ``context`` is None when the tool has none saved."""

    session_id: str
    tool_id: str
    loaded: bool
    context: dict[str, Any] | None
    revision: int


class ContextSummaryResult(TypedDict):
    """``get_context_summary``: counts and names, never values."""

    session_id: str
    revision: int
    context_count: int
    contexts: list[dict[str, Any]]
    current_workspace: str | None
    workspaces: list[dict[str, Any]]
    object_count: int
    stale_object_count: int
    inspector_count: int
    selected_inspector: str | None


class ClearContextResult(TypedDict):
    """``clear_context``: the tool ids whose context was removed."""

    session_id: str
    cleared: list[str]
    revision: int

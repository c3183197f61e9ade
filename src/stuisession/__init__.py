"""stuisession: durable, secure sessions for the STUI Smalltalk development tool.

The framework-agnostic core::

    from stuisession import FileStore, ProtocolHandler

    handler = ProtocolHandler(FileStore("./sessions"))
    reply = handler.handle(b'{"id":"1","command":"create_session","parameters":{"client_id":"me"}}')

Layers, one direction: :class:`ProtocolHandler` (JSON commands) ->
:class:`SessionService` (policy) -> :class:`SessionStore` (storage backends) ->
:class:`SnapshotCodec` (sealed, versioned snapshots).
"""

from __future__ import annotations

from stuisession._version import __version__
from stuisession.clock import Clock, ManualClock, SystemClock
from stuisession.codec.snapshot import Snapshot, SnapshotCodec
from stuisession.errors import (
    AccessDenied,
    Busy,
    ConfigurationError,
    ConflictError,
    IntegrityError,
    InvalidRequest,
    MessageTooLarge,
    RateLimited,
    SessionClosed,
    SessionError,
    SessionExpired,
    SessionNotFound,
    StateTooLarge,
    StorageError,
    StuiSessionError,
    UnknownCommand,
    UpstreamError,
    ValidationError,
)
from stuisession.keys import Keyring
from stuisession.policy import Policy
from stuisession.protocol.handler import ProtocolHandler
from stuisession.replies import (
    ClearContextResult,
    CloseSessionResult,
    ConnectionSummary,
    ContextSummaryResult,
    CreateSessionResult,
    ErrorReply,
    ListClientSessionsResult,
    LoadContextResult,
    Reply,
    RestoreSessionResult,
    RotateCredentialsResult,
    SaveContextResult,
    SessionInfoResult,
    SessionListEntry,
    SessionStatisticsResult,
    SuccessReply,
    UpdateSessionStateResult,
    UpstreamErrorType,
)
from stuisession.service.core import SessionService
from stuisession.state.model import (
    SCHEMA_VERSION,
    Session,
    SessionInfo,
    SessionState,
    SessionStatus,
)
from stuisession.stores.base import SessionStore, StoreStatistics
from stuisession.stores.file.store import FileStore
from stuisession.stores.memory import MemoryStore

__all__ = [
    "SCHEMA_VERSION",
    "AccessDenied",
    "Busy",
    "ClearContextResult",
    "Clock",
    "CloseSessionResult",
    "ConfigurationError",
    "ConflictError",
    "ConnectionSummary",
    "ContextSummaryResult",
    "CreateSessionResult",
    "ErrorReply",
    "FileStore",
    "IntegrityError",
    "InvalidRequest",
    "Keyring",
    "ListClientSessionsResult",
    "LoadContextResult",
    "ManualClock",
    "MemoryStore",
    "MessageTooLarge",
    "Policy",
    "ProtocolHandler",
    "RateLimited",
    "Reply",
    "RestoreSessionResult",
    "RotateCredentialsResult",
    "SaveContextResult",
    "Session",
    "SessionClosed",
    "SessionError",
    "SessionExpired",
    "SessionInfo",
    "SessionInfoResult",
    "SessionListEntry",
    "SessionNotFound",
    "SessionService",
    "SessionState",
    "SessionStatisticsResult",
    "SessionStatus",
    "SessionStore",
    "Snapshot",
    "SnapshotCodec",
    "StateTooLarge",
    "StorageError",
    "StoreStatistics",
    "StuiSessionError",
    "SuccessReply",
    "SystemClock",
    "UnknownCommand",
    "UpdateSessionStateResult",
    "UpstreamError",
    "UpstreamErrorType",
    "ValidationError",
    "__version__",
]

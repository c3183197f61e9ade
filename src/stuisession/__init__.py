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

from ._version import __version__
from .clock import Clock, ManualClock, SystemClock
from .codec import Snapshot, SnapshotCodec
from .errors import (
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
from .keys import Keyring
from .model import SCHEMA_VERSION, Session, SessionInfo, SessionState, SessionStatus
from .policy import Policy
from .protocol import ProtocolHandler
from .service import SessionService
from .stores.base import SessionStore, StoreStatistics
from .stores.file import FileStore
from .stores.memory import MemoryStore

__all__ = [
    "SCHEMA_VERSION",
    "AccessDenied",
    "Busy",
    "Clock",
    "ConfigurationError",
    "ConflictError",
    "FileStore",
    "IntegrityError",
    "InvalidRequest",
    "Keyring",
    "ManualClock",
    "MemoryStore",
    "MessageTooLarge",
    "Policy",
    "ProtocolHandler",
    "RateLimited",
    "Session",
    "SessionClosed",
    "SessionError",
    "SessionExpired",
    "SessionInfo",
    "SessionNotFound",
    "SessionService",
    "SessionState",
    "SessionStatus",
    "SessionStore",
    "Snapshot",
    "SnapshotCodec",
    "StateTooLarge",
    "StorageError",
    "StoreStatistics",
    "StuiSessionError",
    "SystemClock",
    "UnknownCommand",
    "UpstreamError",
    "ValidationError",
    "__version__",
]

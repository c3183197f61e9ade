"""Layer 1 — the session model: what a session *is*, independent of storage and wire.

Holds the record and state classes (:mod:`.model`, :mod:`.schema`), the wire and model
forms of a state (:mod:`.forms`), object references (:mod:`.refs`), schema migrations
(:mod:`.migrations`), every session-record transition (:mod:`.lifecycle`) and state
updates with their change log (:mod:`.updates`).

May import: the foundation modules only (``errors``, ``clock``, ``ids``, ``keys``,
``policy``, ``_json``, ``_fs``).
"""

from stuisession.state.model import SCHEMA_VERSION, Session, SessionInfo, SessionStatus
from stuisession.state.schema import Metadata, SessionState, ToolContext
from stuisession.state.updates import StateUpdate

__all__ = [
    "SCHEMA_VERSION",
    "Metadata",
    "Session",
    "SessionInfo",
    "SessionState",
    "SessionStatus",
    "StateUpdate",
    "ToolContext",
]

"""Result shaping: records, contexts and errors as the JSON objects of a reply.

:func:`session_record` is the one place a :class:`~stuisession.state.model.SessionInfo`
becomes a protocol result dict (admin and CLI callers are to switch to it).
"""

from __future__ import annotations

from typing import Any

from stuisession.clock import isoformat
from stuisession.errors import StuiSessionError
from stuisession.state.model import Session, SessionInfo
from stuisession.state.schema import ToolContext


def session_record(info: SessionInfo, now: float) -> dict[str, Any]:
    """The upstream record fields of *info* at *now* (Unix seconds).

    ``session_id``, ``client_id``, ``created_at``/``last_modified`` (ISO-8601 UTC),
    ``timeout`` (s), ``is_active`` (bool) and our additive ``revision`` (int).
    """
    return {
        "session_id": info.session_id,
        "client_id": info.client_id,
        "created_at": isoformat(info.created_at),
        "last_modified": isoformat(info.last_modified),
        "timeout": info.timeout,
        "is_active": info.is_active(now),
        "revision": info.revision,
    }


def context_json(ctx: ToolContext) -> dict[str, Any]:
    return {
        "tool_type": ctx.tool_type,
        "variables": ctx.variables,
        "data": ctx.data,
        "saved_at": ctx.saved_at,
    }


def context_summary(session: Session, tool_id: str | None) -> dict[str, Any]:
    state = session.state
    contexts = []
    for tid in sorted(state.contexts):
        if tool_id is not None and tid != tool_id:
            continue
        ctx = state.contexts[tid]
        contexts.append(
            {
                "tool_id": tid,
                "tool_type": ctx.tool_type,
                "variable_count": len(ctx.variables),
                "variables": sorted(ctx.variables),
                "data_keys": sorted(ctx.data),
                "saved_at": ctx.saved_at,
            }
        )
    return {
        "session_id": session.session_id,
        "revision": session.revision,
        "context_count": len(contexts),
        "contexts": contexts,
        "current_workspace": state.current_workspace,
        "workspaces": [
            {"name": n, "variable_count": len(ws.variables), "history_count": len(ws.history)}
            for n, ws in sorted(state.workspaces.items())
        ],
        "object_count": len(state.objects),
        "stale_object_count": len(state.stale_objects()),
        "inspector_count": len(state.inspectors),
        "selected_inspector": state.selected_inspector,
    }


def error_response(request_id: Any, exc: StuiSessionError, now: float) -> dict[str, Any]:
    """The flat-envelope error reply for *exc* (``id`` null unless a str or int is given).

    ``error_type`` is upstream's (one of ``SessionError``, ``SessionNotFound``,
    ``RuntimeError``, ``Error``); ``error_code`` and ``details`` are additive.
    """
    reply: dict[str, Any] = {
        "id": request_id if isinstance(request_id, (str, int)) else None,
        "status": "error",
        "error": exc.message,
        "error_type": exc.error_type,
        "error_code": exc.error_code,
        "timestamp": isoformat(now),
    }
    if exc.details:
        reply["details"] = exc.details
    return reply

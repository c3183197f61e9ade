"""The tool-scoped context commands: ``save_context``, ``load_context``,
``get_context_summary`` and ``clear_context``.

Split out of :class:`~stuisession.protocol.handler.ProtocolHandler`, whose command
table calls these with its service. Each takes the request's parameters and
returns the command's result; errors are :mod:`stuisession.errors` exceptions.
"""

from __future__ import annotations

from typing import Any

from stuisession._json import RawJSON
from stuisession.clock import isoformat
from stuisession.errors import ValidationError
from stuisession.protocol import params as val
from stuisession.protocol.dedup import CURRENT_REQUEST
from stuisession.protocol.params import Params
from stuisession.protocol.results import context_json, context_summary
from stuisession.service.core import SessionService
from stuisession.state.updates import StateUpdate

#: what a command returns: a JSON object, or one already encoded
Result = dict[str, Any] | RawJSON


def save_context(service: SessionService, params: Params) -> Result:
    """Store a tool's context (``mode`` replace or merge); the new revision and lineage."""
    session_id = val.session_id(params)
    tool_id = val.tool_id(params)
    assert tool_id is not None
    variables = val.json_object(params, "variables")
    data = val.json_object(params, "context")
    if data is None:
        data = val.json_object(params, "data")
    mode = params.get("mode", "replace")
    if mode not in ("replace", "merge"):
        raise ValidationError('mode must be "replace" or "merge"', field="mode")
    context: dict[str, Any] = {
        "tool_type": val.optional_str(params, "tool_type", 64) or "workspace",
        "saved_at": isoformat(service.clock.now()),
    }
    if variables is not None:
        context["variables"] = variables
    if data is not None:
        context["data"] = data
    if mode == "replace":
        context["variables"] = variables or {}
        context["data"] = data or {}
        update = StateUpdate(sets=((("contexts", tool_id), context),), counts_as_update=False)
    else:
        update = StateUpdate(patches={"contexts": {tool_id: context}}, counts_as_update=False)
    session = service.update(
        session_id,
        update,
        val.creds(params),
        base_revision=val.optional_int(params, "base_revision", minimum=1),
        request_key=CURRENT_REQUEST.get(),
    )
    return {
        "session_id": session_id,
        "tool_id": tool_id,
        "saved": True,
        "revision": session.revision,
        "lineage": session.lineage,
    }


def load_context(service: SessionService, params: Params) -> Result:
    """A tool's saved context (``loaded`` False when there is none)."""
    session_id = val.session_id(params)
    tool_id = val.tool_id(params)
    assert tool_id is not None
    session = service.load(session_id, val.creds(params))
    ctx = session.state.contexts.get(tool_id)
    return {
        "session_id": session_id,
        "tool_id": tool_id,
        "loaded": ctx is not None,
        "context": None if ctx is None else {"tool_id": tool_id, **context_json(ctx)},
        "revision": session.revision,
        "lineage": session.lineage,
    }


def get_context_summary(service: SessionService, params: Params) -> Result:
    """A summary of the saved contexts (of one tool with ``tool_id``)."""
    session_id = val.session_id(params)
    tool_id = val.tool_id(params, required=False)
    session = service.load(session_id, val.creds(params))
    return context_summary(session, tool_id)


def clear_context(service: SessionService, params: Params) -> Result:
    """Drop one tool's context, or all with no ``tool_id``; the ids cleared."""
    session_id = val.session_id(params)
    tool_id = val.tool_id(params, required=False)
    creds = val.creds(params)
    current = service.load(session_id, creds)
    if tool_id is None:
        cleared = sorted(current.state.contexts)
        update = StateUpdate(
            patches={"contexts": {}}, replace=frozenset({"contexts"}), counts_as_update=False
        )
    else:
        cleared = [tool_id] if tool_id in current.state.contexts else []
        update = StateUpdate(patches={"contexts": {tool_id: None}}, counts_as_update=False)
    session = service.update(session_id, update, creds, request_key=CURRENT_REQUEST.get())
    return {
        "session_id": session_id,
        "cleared": cleared,
        "revision": session.revision,
        "lineage": session.lineage,
    }


__all__ = ["Result", "clear_context", "get_context_summary", "load_context", "save_context"]

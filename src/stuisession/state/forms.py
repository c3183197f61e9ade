"""cattrs converters: one place that turns model objects into JSON-ready data and back."""

from __future__ import annotations

from typing import Any

import cattrs

from stuisession.state.model import SessionInfo
from stuisession.state.schema import SessionState, from_wire, to_wire

converter = cattrs.Converter(forbid_extra_keys=False)


def unstructure_info(info: SessionInfo) -> dict[str, Any]:
    """A :class:`SessionInfo` (or the record part of a ``Session``) as a JSON-ready dict."""
    return {
        "session_id": info.session_id,
        "client_id": info.client_id,
        "created_at": info.created_at,
        "last_accessed": info.last_accessed,
        "last_modified": info.last_modified,
        "expires_at": info.expires_at,
        "timeout": info.timeout,
        "revision": info.revision,
        "status": info.status.value,
        "absolute_expires_at": info.absolute_expires_at,
        "token_generation": info.token_generation,
    }


def structure_info(data: Any) -> SessionInfo:
    """The inverse of :func:`unstructure_info` (validators run)."""
    return converter.structure(data, SessionInfo)


def to_wire_dict(state: SessionState) -> dict[str, Any]:
    """The state's wire form: a JSON-ready dict whose keys are the restore-result keys.

    (The *model* form, which mirrors the attrs classes, is
    :func:`stuisession.state.schema.to_model_dict`.)
    """
    return to_wire(state)


def from_wire_dict(data: Any) -> SessionState:
    """The inverse of :func:`to_wire_dict`; raises what :func:`~.schema.from_wire` raises."""
    return from_wire(data)

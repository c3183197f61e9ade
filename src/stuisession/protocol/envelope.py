"""Envelope parsing: one message (bytes, str or mapping) -> a :class:`Request`.

Upstream STUI's flat envelope is ``{"id", "command", "parameters"}``. Anything else raises
:class:`~stuisession.errors.InvalidRequest` (upstream ``Error``) or
:class:`~stuisession.errors.MessageTooLarge`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from stuisession import _json
from stuisession.errors import InvalidRequest, MessageTooLarge
from stuisession.policy import Policy
from stuisession.protocol.limits import parse_request_text
from stuisession.protocol.params import CheckedParams, encodable

#: parameters whose raw request text is kept (stored and echoed without re-encoding)
RAW_PARAMETERS = frozenset({"state_data"})


@attrs.frozen
class Request:
    """A parsed, envelope-valid request."""

    id: str | int
    command: str
    parameters: Mapping[str, Any]


def parse_request(
    message: bytes | bytearray | memoryview | str | Mapping[str, Any], policy: Policy
) -> Request:
    """Validate the envelope of one message; raise :class:`InvalidRequest` if it is bad."""
    limit = policy.max_message_size
    if isinstance(message, (bytes, bytearray, memoryview)):
        if len(message) > limit:
            raise MessageTooLarge(
                f"Message of {len(message)} bytes exceeds the limit of {limit}", limit=limit
            )
        # checked in one chunked pass of the bytes, refused before decoding (issue 17)
        parsed = parse_request_text(message, policy, RAW_PARAMETERS)
        doc = parsed.value
    elif isinstance(message, str):
        if len(message) > limit:  # characters >= bytes/4; cheap first check
            raise MessageTooLarge(f"Message exceeds the limit of {limit} bytes", limit=limit)
        if len(message.encode("utf-8", "surrogatepass")) > limit:
            raise MessageTooLarge(f"Message exceeds the limit of {limit} bytes", limit=limit)
        parsed = parse_request_text(message, policy, RAW_PARAMETERS)
        doc = parsed.value
    elif isinstance(message, Mapping):
        parsed = None
        doc = message
    else:
        raise InvalidRequest(
            f"Message must be bytes, str or a mapping, not {type(message).__name__}"
        )
    if not isinstance(doc, Mapping):
        raise InvalidRequest("Message must be a JSON object")
    request_id = doc.get("id")
    if request_id is None:
        raise InvalidRequest("Message has no id", field="id")
    if isinstance(request_id, bool) or not isinstance(request_id, (str, int)):
        raise InvalidRequest("id must be a string", field="id")
    if isinstance(request_id, str) and (
        len(request_id) > policy.max_request_id_length or not encodable(request_id)
    ):
        raise InvalidRequest("id is too long or not valid UTF-8", field="id")
    if isinstance(request_id, int) and request_id.bit_length() > _json.MAX_INT_BITS:
        raise InvalidRequest("id is out of range", field="id")
    command = doc.get("command")
    if command is None:
        raise _with_id(InvalidRequest("Message has no command", field="command"), request_id)
    if not isinstance(command, str):
        raise _with_id(InvalidRequest("command must be a string", field="command"), request_id)
    params = doc.get("parameters", {})
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise _with_id(
            InvalidRequest("parameters must be a JSON object", field="parameters"), request_id
        )
    if parsed is not None and parsed.checked and type(params) is dict:
        # validated in the parse: the field checks need not walk the values again
        params = CheckedParams(params, raw=parsed.raw)
    return Request(id=request_id, command=command, parameters=params)


def _with_id(exc: InvalidRequest, request_id: str | int) -> InvalidRequest:
    # the envelope had a usable id: echo it so the client can match the error
    exc.request_id = request_id
    return exc

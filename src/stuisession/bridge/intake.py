"""What a forwarded (non-session) request must pass before it reaches the Pharo image.

Session commands are bounded by the protocol handler; a request for any other
command goes to the image instead, and gets the same checks here: the
message size limit, the bounded parser (:mod:`stuisession.protocol.limits`)
and the rate limit, charged to the client or session the request names, else
to the connection it came on. A lone surrogate in the ``id`` (which every reply
echoes) is refused; elsewhere it is passed on escaped, as the image may
legitimately see such strings (``test_lone_surrogates_pass_through_the_bridge_escaped``).
"""

from __future__ import annotations

from typing import Any

from stuisession import _json
from stuisession.errors import InvalidRequest, MessageTooLarge
from stuisession.ids import is_valid_session_id
from stuisession.protocol.limits import parse_message
from stuisession.service.core import SessionService

__all__ = ["admit_forwarded", "rate_key"]


def rate_key(doc: dict[str, Any], connection: str) -> str:
    """The rate-limit bucket of a forwarded request (same keys as session commands)."""
    params = doc.get("parameters")
    if isinstance(params, dict):
        client_id = params.get("client_id")
        if isinstance(client_id, str) and client_id:
            return f"c:{client_id[:256]}"
        session_id = params.get("session_id")
        if is_valid_session_id(session_id):
            return f"s:{session_id}"
    return f"conn:{connection[:64]}"


def admit_forwarded(
    body: bytes | memoryview, service: SessionService, connection: str
) -> dict[str, Any]:
    """The decoded request, once it passed the size limit, the parser and the rate limit.

    Raises :class:`MessageTooLarge`, :class:`InvalidRequest` (bad JSON, a
    broken parsing limit, not an object, a bad ``id``) or
    :class:`~stuisession.errors.RateLimited`; an error raised after the ``id``
    was read carries it in ``request_id``.
    """
    policy = service.policy
    if len(body) > policy.max_message_size:
        raise MessageTooLarge(
            f"Message of {len(body)} bytes exceeds the limit of {policy.max_message_size}",
            limit=policy.max_message_size,
        )
    doc = parse_message(body, policy)
    if not isinstance(doc, dict):
        raise InvalidRequest("Message must be a JSON object")
    request_id = doc.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, (str, int, type(None))):
        raise InvalidRequest("id must be a string", field="id")
    if isinstance(request_id, str) and (
        len(request_id) > policy.max_request_id_length or _json.has_lone_surrogate(request_id)
    ):
        raise InvalidRequest("id is too long or not valid UTF-8", field="id")
    if isinstance(request_id, int) and len(str(request_id)) > 64:
        raise InvalidRequest("id is out of range", field="id")
    try:
        service.check_rate(rate_key(doc, connection))
    except Exception as exc:
        if hasattr(exc, "request_id") and isinstance(request_id, (str, int)):
            exc.request_id = request_id
        raise
    return doc

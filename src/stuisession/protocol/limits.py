"""Parsing limits for untrusted messages, taken from the :class:`~stuisession.policy.Policy`.

Used by the protocol handler for session commands and by the bridge for
forwarded requests, so both meet the same bounds (``docs/security.md``, "Limits").
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Mapping
from typing import Any

from stuisession import _json, _jsonscan
from stuisession.errors import InvalidRequest, StuiSessionError
from stuisession.policy import Policy

__all__ = ["ReplyTooLarge", "bound_reply", "json_limits", "parse_message", "parse_request_text"]


@functools.lru_cache(maxsize=32)
def json_limits(policy: Policy) -> _json.Limits:
    """The :class:`~stuisession._json.Limits` that *policy* sets (cached: policies are frozen)."""
    return _json.Limits(
        max_int_digits=policy.max_int_digits,
        max_object_keys=policy.max_object_keys,
        max_nodes=policy.max_json_nodes,
    )


def parse_message(
    text: bytes | bytearray | memoryview | str, policy: Policy, *, refuse_surrogates: bool = False
) -> Any:
    """Decode one untrusted message within *policy*'s limits.

    Raises :class:`InvalidRequest` for invalid JSON, a lone surrogate (with
    *refuse_surrogates*; session commands check each field instead), absurd
    nesting, or a broken limit (then ``details.limit`` names the policy field
    and ``details.limit_value`` its value).
    """
    with _invalid_request():
        return _json.loads_limited(text, json_limits(policy), refuse_surrogates=refuse_surrogates)


def parse_request_text(
    text: str | bytes | bytearray | memoryview, policy: Policy, raw_names: frozenset[str]
) -> _json.Parsed:
    """:func:`parse_message` of a request envelope, validating its parameters in the same
    parse and keeping the raw text of the *raw_names* parameters (see
    :func:`stuisession._json.loads_request`). Raises what :func:`parse_message` raises,
    and :class:`InvalidRequest` for bytes that are not UTF-8.

    Given bytes (or a zero-copy buffer), the message is checked against the limits in
    one chunked pass before it is decoded (:mod:`stuisession._jsonscan`): a refused
    message is never decoded, and no check holds the GIL for long.
    """
    limits = json_limits(policy)
    with _invalid_request():
        if isinstance(text, str):
            return _json.loads_request(text, limits, raw_names)
        scanned = _json.prescan(text, limits)  # refuse before decoding
        try:
            decoded = _jsonscan.decode_utf8(text)
        except UnicodeDecodeError:
            raise InvalidRequest("Message is not valid UTF-8") from None
        return _json.loads_request(decoded, limits, raw_names, encoded=text, scanned=scanned)


@contextlib.contextmanager
def _invalid_request() -> Iterator[None]:
    """Parse errors and broken limits as :class:`InvalidRequest` (``details.limit``)."""
    try:
        yield
    except RecursionError:
        raise InvalidRequest("Message is nested too deeply") from None
    except _json.LimitExceeded as exc:
        raise InvalidRequest(
            f"Message refused: {exc}", limit=exc.limit, limit_value=exc.value
        ) from None
    except ValueError as exc:
        raise InvalidRequest(f"Message is not valid JSON: {exc}") from None


class ReplyTooLarge(StuiSessionError):
    """A reply would exceed ``Policy.max_reply_bytes``; it is refused, never queued."""

    error_type = "SessionError"
    error_code = "ReplyTooLarge"

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"Reply of {size} bytes exceeds the limit of {limit} bytes", size=size, limit=limit
        )


def bound_reply(encoded: bytes, reply: Mapping[str, Any], policy: Policy, now: float) -> bytes:
    """*encoded*, or a small ``ReplyTooLarge`` error reply if it is over ``max_reply_bytes``."""
    if len(encoded) <= policy.max_reply_bytes:
        return encoded
    from stuisession.protocol.handler import error_response

    request_id = reply.get("id")
    exc = ReplyTooLarge(len(encoded), policy.max_reply_bytes)
    return _json.dumps(error_response(request_id, exc, now))

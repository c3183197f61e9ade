"""The bridge's own replies and frame handling: error replies for messages the handler
never saw, ROUTER frame splitting, and cheap peeking into JSON replies for the request log.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from stuisession import _json
from stuisession.clock import SystemClock
from stuisession.errors import InvalidRequest, StuiSessionError
from stuisession.protocol.results import error_response

#: a message with more frames than this is refused without echoing its envelope
MAX_FRAMES = 32
_WALL = SystemClock()
#: how much of a message is read to find its routing fields
PEEK_BYTES = 64 * 1024


def error_for(request_id: Any, exc: StuiSessionError) -> bytes:
    return _json.dumps(error_response(request_id, exc, _WALL.now()))


# -- framing --------------------------------------------------------------------------
def split_frames(
    frames: list[bytes | memoryview],
) -> tuple[list[bytes], bytes | memoryview | None, str | None]:
    """Split a ROUTER message into ``(envelope, body, problem)``.

    *envelope* is what to echo in front of the reply (as bytes). *problem* is None
    when *body* is the one request frame (bytes, or a zero-copy ``memoryview`` of a
    large one), else a message for the error reply.
    """
    envelope, body, problem = _split(frames)
    return [bytes(f) for f in envelope], body, problem


def _split(
    frames: list[bytes | memoryview],
) -> tuple[list[bytes | memoryview], bytes | memoryview | None, str | None]:
    if len(frames) > MAX_FRAMES:
        # don't echo an arbitrarily long envelope; answer REQ-style if it looks like REQ
        head = frames[:2] if len(frames) > 1 and frames[1] == b"" else frames[:1]
        return head, None, f"Message has {len(frames)} frames; at most {MAX_FRAMES} are accepted"
    delimiter = next((i for i in range(1, len(frames)) if frames[i] == b""), None)
    if delimiter is None:
        # DEALER style: [identity, *routing, body]
        if len(frames) < 2:
            return frames[:1], None, "Message has no body frame"
        return frames[:-1], frames[-1], None
    envelope, payload = frames[: delimiter + 1], frames[delimiter + 1 :]
    if not payload:
        return envelope, None, "Message has no body frame after the empty delimiter frame"
    if len(payload) > 1:
        return (
            envelope,
            None,
            f"Message has {len(payload)} body frames; a request is one JSON frame",
        )
    return envelope, payload[0], None


def error_reply(message: str, kind: type[StuiSessionError] = InvalidRequest) -> bytes:
    """An error reply in the flat envelope, for messages the handler never saw.

    *kind* gives both the upstream ``error_type`` and our ``error_code``.
    """
    return error_for(None, kind(message))


# -- cheap peeking for the request log ---------------------------------------------------
_decoder = json.JSONDecoder()
#: reads past a member that is not wanted without converting its numbers: a run of
#: 3,900-digit integers costs quadratic time in int() (issue 17, cpu_valid_json)
_skipper = json.JSONDecoder(parse_int=str, parse_float=str, parse_constant=str)
_WS = re.compile(r"[ \t\n\r]*")
_PLAIN = re.compile(r"[A-Za-z0-9_.:@/+-]{1,64}")


def peek_fields(
    data: bytes | memoryview,
    names: tuple[str, ...],
    done: Callable[[dict[str, Any]], bool] | None = None,
    *,
    nested: Mapping[str, tuple[str, ...]] | None = None,
) -> dict[str, Any]:
    """Top-level members *names* of the JSON object in *data*, read cheaply.

    Reads members in order from the first :data:`PEEK_BYTES` bytes only and
    stops as soon as all *names* (or what *done* says is enough) are found, so
    a large ``parameters`` or ``result`` after them is never decoded. Anything
    unreadable just ends the search: this is for logging and routing, not
    validation.

    *nested* maps a member name to the names to read inside it when it is an
    object: its value is then a dict of just those (read the same way), so
    ``parameters.session_id`` is found even when a large ``state_data`` follows.
    """
    text = bytes(data[:PEEK_BYTES]).decode("utf-8", "replace")
    found: dict[str, Any] = {}
    with contextlib.suppress(ValueError, RecursionError):
        _peek_object(text, 0, found, names, done=done, nested=nested or {})
    return found


def _peek_object(
    text: str,
    i: int,
    found: dict[str, Any],
    names: tuple[str, ...],
    *,
    done: Callable[[dict[str, Any]], bool] | None = None,
    nested: Mapping[str, tuple[str, ...]] | None = None,
) -> int | None:
    """Fill *found* from the object at *text[i]*; the index after it, or None if
    the search stopped early (enough found, or unreadable)."""
    i = _skip_ws(text, i)
    if text[i : i + 1] != "{":
        return None
    i = _skip_ws(text, i + 1)
    if text[i : i + 1] == "}":
        return i + 1
    while True:
        if text[i : i + 1] != '"':
            return None
        key, i = _decoder.raw_decode(text, i)
        i = _skip_ws(text, i)
        if text[i : i + 1] != ":":
            return None
        i = _skip_ws(text, i + 1)
        wanted = key in names and key not in found
        if wanted and nested and key in nested and text[i : i + 1] == "{":
            inner: dict[str, Any] = {}
            found[key] = inner
            end = _peek_object(text, i, inner, nested[key])
            if end is None:
                return None
            i = end
        elif wanted:
            found[key], i = _decoder.raw_decode(text, i)
        else:
            _, i = _skipper.raw_decode(text, i)
        if wanted and (len(found) == len(names) or (done is not None and done(found))):
            return None
        i = _skip_ws(text, i)
        if text[i : i + 1] == "}":
            return i + 1
        if text[i : i + 1] != ",":
            return None
        i = _skip_ws(text, i + 1)


def _peek_result(reply: bytes, names: tuple[str, ...]) -> dict[str, Any]:
    """Members *names* of a reply's ``result`` object, read cheaply."""
    result = peek_fields(reply, ("result",), nested={"result": names}).get("result")
    return result if isinstance(result, dict) else {}


def _skip_ws(text: str, i: int) -> int:
    match = _WS.match(text, i)
    return i if match is None else match.end()


def reply_complete(found: dict[str, Any]) -> bool:
    # a success reply has no error_type: stop before its (possibly large) result
    return found.get("status") == "success" and "id" in found


def printable(value: Any) -> str:
    """A log-safe rendering of a client-chosen scalar (no newlines, bounded length)."""
    if value is None:
        return "-"
    text = value if isinstance(value, str) else json.dumps(value)[:64]
    if _PLAIN.fullmatch(text):
        return text
    return repr(text[:64])

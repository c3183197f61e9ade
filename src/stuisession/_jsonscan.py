"""A chunked pre-scan of an untrusted JSON message, on its UTF-8 bytes, before any decoding.

Issue 17 (``tests/adversarial``, ``cpu_valid_json``): a message of several MB that
breaks a parsing limit used to cost one full-length C pass per check (decoding,
re-encoding, counting separators, translating digits), each holding the GIL for
tens of ms on a loaded machine, so every other request of the bridge waited
behind it. :func:`scan` does all of these checks in **one pass of small chunks**
(:data:`CHUNK` bytes per C call, so the GIL is free for others between chunks),
straight from the received buffer (bytes or a zero-copy ``memoryview``), and
refuses as soon as a bound is provably broken:

- more separators than ``max_nodes`` (the node bound of :mod:`stuisession._json`);
- a run of more than ``max_digits + 32`` digits **outside any string**: that is an
  integer literal over ``max_int_digits`` or a number literal longer than the
  parser accepts, whatever follows (so the refusal equals the parser's own).

What the scan learns is handed to the parser (:class:`Scan`), which then needs no
pass of its own over the whole text. UTF-8 separators and digits are ASCII, and
no byte of a multi-byte UTF-8 sequence is ASCII, so counting on the bytes equals
counting on the decoded text.
"""

from __future__ import annotations

import codecs
import re

import attrs

__all__ = ["CHUNK", "Scan", "ScanRefusal", "decode_utf8", "scan"]

#: bytes examined per C call (at most a fraction of a ms each)
CHUNK = 128 * 1024
_SEPARATORS = b",[{:"
#: digits and the decimal dot as "0" (a number literal shows as a run of "0")
_NUMERIC = bytes.maketrans(b"123456789.", b"0" * 10)
#: an escape that may encode half of a surrogate pair
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class ScanRefusal(ValueError):
    """A bound is broken: ``limit`` names it (``max_json_nodes``/``max_int_digits``)."""

    def __init__(self, message: str, limit: str) -> None:
        super().__init__(message)
        self.limit = limit


@attrs.frozen
class Scan:
    """What one pass over a message found (upper bounds and hints for the parser)."""

    #: an upper bound on the number of JSON values
    nodes: int
    #: colons in the message (an upper bound on the members of any object)
    colons: int
    #: a digit run of at least the ``run`` asked for, or an exponent, may need the number hooks
    numbers: bool
    #: an escape that may encode half a surrogate pair occurs
    surrogate_escape: bool


def scan(
    data: bytes | bytearray | memoryview, *, max_nodes: int, max_digits: int, run: int
) -> Scan:
    """Chunked passes over *data* (UTF-8 JSON).

    *run* is the digit-run length from which the parser needs its number hooks.
    Raises :class:`ScanRefusal` when more than *max_nodes* values, or a number
    literal over *max_digits* digits outside any string, are found. The first pass
    does only what can refuse (so a refusal costs little); the second, the hints.
    """
    view = memoryview(data).cast("B") if not isinstance(data, bytes) else data
    # pass 1: the node bound only (one C call per chunk)
    nodes = 1
    for start in range(0, len(view), CHUNK):
        chunk = bytes(view[start : start + CHUNK])
        nodes += len(chunk) - len(chunk.translate(None, _SEPARATORS))
        if nodes > max_nodes:
            raise ScanRefusal(f"message holds more than {max_nodes} JSON values", "max_json_nodes")
    # pass 2: long number literals (refused when outside strings), then the hints
    numbers = False
    long_seen = False
    colons = 0
    surrogate = False
    refuse_run = b"0" * (max_digits + 33)
    want_run = b"0" * max(1, run)
    tail = b""  # the end of the previous chunk, for what spans two chunks
    for start in range(0, len(view), CHUNK):
        chunk = bytes(view[start : start + CHUNK])
        colons += chunk.count(b":")
        if not long_seen:
            numeric = (tail + chunk).translate(_NUMERIC)
            numbers = numbers or numeric.find(want_run) >= 0
            at = numeric.find(refuse_run) if numbers else -1
            if at >= 0:
                # only the first run that long is looked at: the parser checks the others
                long_seen = True
                if _outside_strings(view, start - len(tail) + at):
                    raise ScanRefusal(
                        f"message holds a number of more than {max_digits} digits",
                        "max_int_digits",
                    )
            if not numbers:
                numbers = numeric.find(b"0e") >= 0 or numeric.find(b"0E") >= 0
        if not surrogate and (tail + chunk).find(b"\\u") >= 0:
            surrogate = _SURROGATE_ESCAPE.search(tail + chunk) is not None
        tail = chunk[-len(refuse_run) :]
    return Scan(nodes=nodes, colons=colons, numbers=numbers, surrogate_escape=surrogate)


def _outside_strings(view: bytes | memoryview, at: int) -> bool:
    """True when byte *at* of valid JSON is outside every string (even quote count before it)."""
    head = bytes(view[:at]).replace(b"\\\\", b"").replace(b'\\"', b"")
    return head.count(b'"') % 2 == 0


def decode_utf8(data: bytes | bytearray | memoryview) -> str:
    """*data* decoded as strict UTF-8, in chunks of :data:`CHUNK` bytes.

    Raises :class:`UnicodeDecodeError` as :meth:`bytes.decode` does.
    """
    if len(data) <= CHUNK:
        return bytes(data).decode("utf-8")
    view = memoryview(data).cast("B") if not isinstance(data, bytes) else data
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    parts = [decoder.decode(view[i : i + CHUNK]) for i in range(0, len(view), CHUNK)]
    parts.append(decoder.decode(b"", final=True))
    return "".join(parts)

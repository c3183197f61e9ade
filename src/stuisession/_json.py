"""JSON helpers: strict value checks, compact encoding, and splicing stored bytes.

Restores hand over the state bytes kept in a snapshot without decoding them:
:class:`RawJSON` marks such bytes inside a response, and :func:`dumps_with_raw`
splices them into the encoded reply.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from stuisession import _jsonscan
from stuisession.errors import ValidationError

#: Nesting deeper than this is refused (protects the recursive encoder and decoder).
MAX_DEPTH = 200
#: a lone surrogate (e.g. from a "\ud800" escape) can't be encoded as UTF-8
_SURROGATE = re.compile("[\ud800-\udfff]")

JSONValue = Any  # a recursive alias would need PEP 695 generics; keep the API readable


class RawJSON:
    """Bytes that are already one valid, compact JSON value (UTF-8)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def value(self) -> Any:
        """Decode the bytes (slow path; used when a dict result is asked for)."""
        return json.loads(self.data)

    def __repr__(self) -> str:  # never print contents: they may be session state
        return f"RawJSON(<{len(self.data)} bytes>)"


_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON. Raises ``ValueError`` on NaN/Infinity."""
    return _encoder.encode(value).encode("utf-8")


_sorted_encoder = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), allow_nan=False, sort_keys=True
)


def dumps_sorted(value: Any) -> bytes:
    """Compact UTF-8 JSON with sorted keys (a canonical form for digests)."""
    return _sorted_encoder.encode(value).encode("utf-8")


def loads(data: bytes | str) -> Any:
    """Strict JSON decode: NaN/Infinity literals are refused."""
    return json.loads(data, parse_constant=_refuse_constant)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# -- bounded parsing of untrusted messages -------------------------------------------------
@attrs.frozen
class Limits:
    """Bounds on what one untrusted JSON message may cost to parse.

    Checked before or while parsing, so the work done on a refused message is
    linear in its length: the node bound is an upper bound counted in C
    (``bytes.count`` of ``,``, ``[``, ``{`` and ``:``), integer digits are
    checked before conversion (which is quadratic), object sizes as each
    object is built.
    """

    #: longest integer literal, in decimal digits
    max_int_digits: int = 640
    #: most members of one object
    max_object_keys: int = 100_000
    #: most values in the whole message (estimated from above)
    max_nodes: int = 1_000_000


class LimitExceeded(ValueError):
    """A message broke a :class:`Limits` bound; ``limit`` names which, ``value`` its bound."""

    def __init__(self, message: str, limit: str, value: int) -> None:
        super().__init__(message)
        self.limit = limit
        self.value = value


#: an escape that may encode half of a surrogate pair (rare; only then is the
#: decoded message walked for lone surrogates)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


#: bytes counted per C call by :func:`node_estimate`: a C call holds the GIL
#: throughout, so a 10 MB message counted at once stalls every other thread of the
#: bridge for tens of ms (tests/adversarial, cpu_valid_json)
_COUNT_CHUNK = 256 * 1024
_SEPARATORS = b",[{:"


def _check_nodes(data: bytes | str, limits: Limits) -> None:
    # counted in C before any parsing: the cost of a refusal stays linear and small
    if node_estimate(data) > limits.max_nodes:
        raise LimitExceeded(
            f"message holds more than {limits.max_nodes} JSON values",
            "max_json_nodes",
            limits.max_nodes,
        )


def prescan(encoded: bytes | bytearray | memoryview, limits: Limits) -> _jsonscan.Scan:
    """:func:`stuisession._jsonscan.scan` with *limits* (a broken bound: :class:`LimitExceeded`)."""
    # a literal over a bound holds a run of digits and dots at least this long (a
    # float's length bound counts its digits, its dot and a few signs)
    run = max(1, min(300, (limits.max_int_digits + 31) // 2))
    try:
        return _jsonscan.scan(
            encoded, max_nodes=limits.max_nodes, max_digits=limits.max_int_digits, run=run
        )
    except _jsonscan.ScanRefusal as exc:
        value = limits.max_nodes if exc.limit == "max_json_nodes" else limits.max_int_digits
        raise LimitExceeded(str(exc), exc.limit, value) from None


def _object_hook(max_keys: int) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def object_hook(obj: dict[str, Any]) -> dict[str, Any]:
        if len(obj) > max_keys:
            raise LimitExceeded(
                f"message holds an object of more than {max_keys} members",
                "max_object_keys",
                max_keys,
            )
        return obj

    return object_hook


def node_estimate(data: bytes | str) -> int:
    """An upper bound on the number of JSON values in *data* (separators counted in C)."""
    if isinstance(data, str):
        return data.count(",") + data.count("[") + data.count("{") + data.count(":") + 1
    count = 1
    for start in range(0, len(data), _COUNT_CHUNK):
        chunk = data[start : start + _COUNT_CHUNK]
        count += len(chunk) - len(chunk.translate(None, _SEPARATORS))
    return count


def loads_limited(
    data: bytes | bytearray | memoryview | str, limits: Limits, *, refuse_surrogates: bool = False
) -> Any:
    """Strict JSON decode of an untrusted message, within *limits*.

    Raises :class:`LimitExceeded` (a ``ValueError``) when a bound is broken,
    ``ValueError`` for invalid JSON (NaN/Infinity included, and with
    *refuse_surrogates* any string holding a lone surrogate) and
    ``RecursionError`` for absurd nesting.
    Duplicate keys keep the last value, as :func:`json.loads` does.
    """
    if isinstance(data, str):
        _check_nodes(data, limits)
    else:  # one chunked pass, refusing what provably breaks a bound before parsing
        prescan(data, limits)
        if not isinstance(data, bytes):  # a zero-copy buffer: json reads str or bytes
            data = _jsonscan.decode_utf8(data)
    max_digits = limits.max_int_digits

    def parse_int(text: str) -> int:
        _int_digits(text, max_digits)
        return int(text)

    def parse_float(text: str) -> float:
        _check_float_literal(text, max_digits)
        return float(text)

    value = json.loads(
        data,
        parse_int=parse_int,
        parse_float=parse_float,
        parse_constant=_refuse_constant,
        object_hook=_object_hook(limits.max_object_keys),
    )
    if not refuse_surrogates:
        return value
    raw = data if isinstance(data, str) else data.decode("utf-8", "replace")
    if _SURROGATE_ESCAPE.search(raw) is not None and has_lone_surrogate(value):
        raise ValueError("message holds a lone surrogate (a \\uD800-\\uDFFF escape not in a pair)")
    return value


def _int_digits(text: str, max_digits: int) -> int:
    """The digit count of the integer literal *text*; :class:`LimitExceeded` over *max_digits*."""
    digits = len(text) - (text[0] == "-")
    if digits > max_digits:
        raise LimitExceeded(
            f"message holds an integer of more than {max_digits} digits",
            "max_int_digits",
            max_digits,
        )
    return digits


def _check_float_literal(text: str, max_digits: int) -> None:
    """:class:`LimitExceeded` for a number literal longer than *max_digits* + 32 characters."""
    if len(text) > max_digits + 32:  # float() is linear, but bound the literal anyway
        raise LimitExceeded(
            f"message holds a number of more than {max_digits} digits",
            "max_int_digits",
            max_digits,
        )


#: decimal digits of the longest integer :func:`check_json_value` accepts (MAX_INT_BITS)
_MAX_CHECKED_DIGITS = 3900
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
_INNERMOST = re.compile(rb"\[\]|\{\}")


def nesting_depth(data: bytes, at_most: int) -> int | None:
    """Container nesting depth of the valid JSON *data*, or None when over *at_most*.

    Linear C work: escaped backslashes and quotes are dropped, the text outside
    strings (every other piece between quotes) is reduced to its brackets, and
    innermost pairs are removed once per level.
    """
    text = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    brackets = b"".join(text.split(b'"')[::2]).translate(None, _NOT_BRACKETS)
    depth = 0
    while brackets:
        if depth >= at_most:
            return None
        # one pass: removing "[]" then "{}" would take "{[]}" down two levels at once
        brackets = _INNERMOST.sub(b"", brackets)
        depth += 1
    return depth


@attrs.frozen
class Parsed:
    """One request parsed by :func:`loads_request`."""

    value: Any
    #: raw UTF-8 JSON of the named members of the top-level ``parameters`` object
    raw: dict[str, bytes]
    #: every value inside ``parameters`` is plain JSON as :func:`check_json_value`
    #: (default depth) requires: a second walk of them is not needed
    checked: bool


_WS = re.compile(r"[ \t\n\r]*")


def loads_request(
    data: str,
    limits: Limits,
    raw_names: frozenset[str] = frozenset(),
    *,
    encoded: bytes | bytearray | memoryview | None = None,
    scanned: _jsonscan.Scan | None = None,
) -> Parsed:
    """:func:`loads_limited` of one request envelope, also validating its parameters.

    In the same parse it records whether every parameter value is plain JSON
    (finite numbers, integers :func:`check_json_value` accepts, no lone
    surrogate, nested at most :data:`MAX_DEPTH` levels) and keeps the raw text
    of the ``parameters`` members named in *raw_names*, so that a caller can
    store or echo them without encoding them again. Raises what
    :func:`loads_limited` raises.

    *encoded*: the UTF-8 bytes *data* was decoded from, when the caller has them:
    every whole-message check is then one chunked pass over them
    (:func:`stuisession._jsonscan.scan`), which also refuses a message that
    provably breaks a bound before it is parsed; *scanned* is that pass's result when
    the caller already made it (:func:`prescan`).
    """
    if encoded is None:
        encoded = data.encode("utf-8", "surrogatepass")
    if scanned is None:
        scanned = prescan(encoded, limits)
    max_digits = limits.max_int_digits
    max_keys = limits.max_object_keys
    plain = [True]

    def parse_int(text: str) -> int:
        if _int_digits(text, max_digits) > _MAX_CHECKED_DIGITS:
            plain[0] = False
        return int(text)

    def parse_float(text: str) -> float:
        _check_float_literal(text, max_digits)
        value = float(text)
        if not math.isfinite(value):  # 1e999: the field checks say which field
            plain[0] = False
        return value

    object_hook = _object_hook(max_keys)

    # the hooks are Python calls per number/object: skipped when the pre-scan shows
    # that no literal can break a bound (no digit run that long, no exponent) and no
    # object can have that many members (fewer colons in the whole message)
    numbers = scanned.numbers
    decoder = json.JSONDecoder(
        parse_int=parse_int if numbers else None,
        parse_float=parse_float if numbers else None,
        parse_constant=_refuse_constant,
        object_hook=object_hook if scanned.colons > max_keys else None,
    )
    raw: dict[str, bytes] = {}
    value = _scan_envelope(data, decoder, raw_names, raw) if raw_names else None
    if value is None:
        raw.clear()
        value = decoder.decode(data)
    if scanned.surrogate_escape:
        plain[0] = False  # rare: the field checks name the field holding it
    checked = plain[0]
    if checked:
        # the envelope and ``parameters`` are two of the levels
        checked = nesting_depth(bytes(encoded), MAX_DEPTH + 1) is not None
    return Parsed(value, raw, checked)


def _same(obj: dict[str, Any]) -> dict[str, Any]:
    return obj


def _scan_envelope(
    s: str, decoder: json.JSONDecoder, raw_names: frozenset[str], raw: dict[str, bytes]
) -> dict[str, Any] | None:
    """Decode the envelope object member by member (values by the C scanner), keeping
    the raw text of ``parameters`` members in *raw_names*; None when *s* is not a
    plain object of this shape (then the caller decodes it the usual way)."""
    scan = decoder.scan_once  # type: ignore[attr-defined]
    found: Any = decoder.object_hook  # None when the caller skipped the hook
    hook: Any = _same if found is None else found

    def members(idx: int, capture: bool) -> tuple[dict[str, Any], int] | None:
        # s[idx] == "{"
        out: dict[str, Any] = {}
        if capture:
            raw.clear()  # a duplicate "parameters": only the last one counts
        idx = _WS.match(s, idx + 1).end()  # type: ignore[union-attr]
        if s[idx : idx + 1] == "}":
            return hook(out), idx + 1
        while True:
            if s[idx : idx + 1] != '"':
                return None
            key, idx = json.decoder.scanstring(s, idx + 1)  # type: ignore[attr-defined]
            idx = _WS.match(s, idx).end()  # type: ignore[union-attr]
            if s[idx : idx + 1] != ":":
                return None
            start = idx = _WS.match(s, idx + 1).end()  # type: ignore[union-attr]
            if not capture and key == "parameters" and s[idx : idx + 1] == "{":
                inner = members(idx, True)
                if inner is None:
                    return None
                out[key], idx = inner
            else:
                out[key], idx = scan(s, idx)
                if capture and key in raw_names:
                    raw[key] = s[start:idx].encode("utf-8")  # a duplicate: the last counts
            idx = _WS.match(s, idx).end()  # type: ignore[union-attr]
            c = s[idx : idx + 1]
            if c == "}":
                return hook(out), idx + 1
            if c != ",":
                return None
            idx = _WS.match(s, idx + 1).end()  # type: ignore[union-attr]

    try:
        idx = _WS.match(s, 0).end()  # type: ignore[union-attr]
        if s[idx : idx + 1] != "{":
            return None
        result = members(idx, False)
    except (StopIteration, ValueError, IndexError):
        return None  # the usual decode reports it (or a limit: raised again there)
    if result is None:
        return None
    value, idx = result
    if _WS.match(s, idx).end() != len(s):  # type: ignore[union-attr]
        return None
    return value


def has_lone_surrogate(value: Any) -> bool:
    """True if any string (or key) in the decoded JSON *value* holds a lone surrogate."""
    stack = [value]
    while stack:
        v = stack.pop()
        t = type(v)
        if t is str:
            if _SURROGATE.search(v) is not None:
                return True
        elif t is dict:
            for k, x in v.items():
                if _SURROGATE.search(k) is not None:
                    return True
                stack.append(x)
        elif t is list:
            stack.extend(v)
    return False


def resolve_raw(value: Any) -> Any:
    """Return *value* with every :class:`RawJSON` replaced by its decoded value."""
    if isinstance(value, RawJSON):
        return value.value()
    if isinstance(value, dict):
        return {k: resolve_raw(v) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_raw(v) for v in value]
    return value


def dumps_with_raw(value: Any) -> bytes:
    """Encode *value*, splicing the bytes of any :class:`RawJSON` in place.

    Each raw value is replaced by a random placeholder string, the rest is
    encoded normally, and the placeholders (which can not occur in user data,
    being fresh random tokens) are swapped for the raw bytes. The encoder
    meets a :class:`RawJSON` only through its ``default`` hook, so the rest of
    the value is never walked in Python.
    """
    raws: dict[str, bytes] = {}

    def default(v: Any) -> Any:
        if isinstance(v, RawJSON):
            token = "\x00raw" + secrets.token_hex(8)
            raws[token] = v.data
            return token
        raise TypeError(f"{type(v).__name__} is not JSON serializable")

    encoder = json.JSONEncoder(
        ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=default
    )
    out = encoder.encode(value).encode("utf-8")
    for token, data in raws.items():
        # the encoder escapes "\x00" as "\u0000", which user data can't forge
        # without also knowing the random token
        out = out.replace(dumps(token), data, 1)
    return out


#: about 3,900 decimal digits: below Python's default int/str conversion limit
MAX_INT_BITS = 13_000


def check_json_value(value: Any, field: str, max_depth: int = MAX_DEPTH) -> None:
    """Raise :class:`ValidationError` unless *value* is plain JSON data.

    Plain JSON: dicts with string keys, lists, strings (valid Unicode: no lone
    surrogates), bools, None, ints and finite floats, nested at most
    *max_depth* levels.
    """
    # exact-type dispatch first (what json.loads produces); subclasses and
    # other mappings/sequences take the general branch below
    stack: list[tuple[Any, int]] = [(value, 0)]
    pop, push = stack.pop, stack.append
    while stack:
        v, depth = pop()
        if depth > max_depth:
            raise ValidationError(f"{field} is nested deeper than {max_depth} levels", field=field)
        t = type(v)
        if t is str:
            if not v.isascii() and _SURROGATE.search(v) is not None:
                raise ValidationError(f"{field} contains a lone surrogate", field=field)
        elif t is dict:
            depth += 1
            for k, x in v.items():
                if type(k) is not str:
                    raise ValidationError(f"{field} has a non-string key", field=field)
                if not k.isascii() and _SURROGATE.search(k) is not None:
                    raise ValidationError(f"{field} has a key with a lone surrogate", field=field)
                push((x, depth))
        elif t is list:
            depth += 1
            for x in v:
                push((x, depth))
        elif t is int:
            # Python refuses to print ints beyond sys.get_int_max_str_digits() (4300 digits)
            if v.bit_length() > MAX_INT_BITS:
                raise ValidationError(f"{field} contains an integer that is too large", field=field)
        elif t is float:
            if not math.isfinite(v):
                raise ValidationError(f"{field} contains a non-finite number", field=field)
        elif v is None or t is bool:
            continue
        else:
            _check_other(v, depth, field, push)


def _check_other(v: Any, depth: int, field: str, push: Any) -> None:
    """The general branch of :func:`check_json_value`: subclasses and other containers."""
    if isinstance(v, bool):
        return
    if isinstance(v, str):
        if _SURROGATE.search(v) is not None:
            raise ValidationError(f"{field} contains a lone surrogate", field=field)
        return
    if isinstance(v, int):
        if v.bit_length() > MAX_INT_BITS:
            raise ValidationError(f"{field} contains an integer that is too large", field=field)
        return
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValidationError(f"{field} contains a non-finite number", field=field)
        return
    if isinstance(v, Mapping):
        for k, x in v.items():
            if not isinstance(k, str):
                raise ValidationError(f"{field} has a non-string key", field=field)
            if _SURROGATE.search(k) is not None:
                raise ValidationError(f"{field} has a key with a lone surrogate", field=field)
            push((x, depth + 1))
        return
    if isinstance(v, (list, tuple)):
        for x in v:
            push((x, depth + 1))
        return
    raise ValidationError(
        f"{field} contains a value of type {type(v).__name__}, which is not JSON",
        field=field,
    )

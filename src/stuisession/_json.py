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
from collections.abc import Mapping
from typing import Any

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

"""Values and references.

A *value* anywhere in the session state (a workspace variable, an object
slot, an evaluation result) is either a JSON literal or a reference to an
object in the registry, written ``{"$ref": "<object id>"}``. Objects refer to
each other the same way, so shared references and cycles are stored exactly:
two variables bound to one object hold the same ``$ref``, and a cycle is a
cycle of ids.

An object whose only key is ``"$ref"`` with a string value is always a
reference; a literal of that exact shape can't be stored.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from stuisession.errors import ValidationError

REF_KEY = "$ref"
OBJECT_ID_RE = re.compile(r"[A-Za-z0-9_.:@#-]{1,128}")


def ref(object_id: str) -> dict[str, str]:
    """A reference value to *object_id*."""
    return {REF_KEY: object_id}


def is_ref(value: Any) -> bool:
    """True when *value* is a reference ``{"$ref": id}``."""
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get(REF_KEY), str)


def check_object_id(value: Any, field: str = "object_id") -> str:
    """Return *value* if it is a well-formed object id, else raise :class:`ValidationError`."""
    if not isinstance(value, str) or OBJECT_ID_RE.fullmatch(value) is None:
        raise ValidationError(
            f"{field} must be an object id (1-128 characters of A-Z a-z 0-9 _ . : @ # -)",
            field=field,
        )
    return value


def iter_refs(value: Any) -> Iterator[str]:
    """Every object id referenced anywhere inside *value* (iterative, no recursion limit)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            if is_ref(v):
                yield v[REF_KEY]
            else:
                stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)

"""Session identifiers and client identifiers.

Session ids carry 256 bits from :mod:`secrets`, are URL-safe, and are validated
by format wherever they enter the library, so a crafted id such as
``../../x`` can never reach a file path or a Redis key.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from stuisession.errors import ValidationError

SESSION_ID_PREFIX = "session_"
#: 32 random bytes -> 43 base64url characters (no padding)
_TOKEN_BYTES = 32
_SESSION_ID_RE = re.compile(r"session_[A-Za-z0-9_-]{43}")
#: no control characters: Unicode category Cc is exactly C0, DEL and C1
#: (U+0000-U+001F, U+007F-U+009F); C1 ones such as U+0085 (NEL) and U+009B
#: (CSI) act as line breaks and terminal escapes too
_CLIENT_ID_RE = re.compile(r"[^\x00-\x1f\x7f-\x9f]{1,256}")
MAX_CLIENT_ID_LENGTH = 256
_SURROGATE_RE = re.compile("[\ud800-\udfff]")


def new_session_id() -> str:
    """Return a fresh session id: ``session_`` + 43 URL-safe characters (256 bits)."""
    return SESSION_ID_PREFIX + secrets.token_urlsafe(_TOKEN_BYTES)


def is_valid_session_id(value: object) -> bool:
    """True when *value* is a string of the exact session-id format."""
    return isinstance(value, str) and _SESSION_ID_RE.fullmatch(value) is not None


def check_session_id(value: Any, field: str = "session_id") -> str:
    """Return *value* if it is a well-formed session id, else raise :class:`ValidationError`.

    The offending value is never echoed back (it may be a guessed secret).
    """
    if not isinstance(value, str):
        raise ValidationError(f"{field} must be a string", field=field)
    if _SESSION_ID_RE.fullmatch(value) is None:
        raise ValidationError(f"{field} is not a valid session id", field=field)
    return value


def check_client_id(value: Any, field: str = "client_id") -> str:
    """Return *value* if it is an acceptable client id, else raise :class:`ValidationError`."""
    if not isinstance(value, str):
        raise ValidationError(f"{field} must be a string", field=field)
    if not value or value.strip() == "":
        raise ValidationError(f"{field} must not be empty", field=field)
    if len(value) > MAX_CLIENT_ID_LENGTH:
        raise ValidationError(
            f"{field} is longer than {MAX_CLIENT_ID_LENGTH} characters", field=field
        )
    if _CLIENT_ID_RE.fullmatch(value) is None:
        raise ValidationError(f"{field} contains control characters", field=field)
    if _SURROGATE_RE.search(value) is not None:
        # not encodable as UTF-8: the record could not be stored
        raise ValidationError(f"{field} contains a lone surrogate", field=field)
    return value


__all__ = [
    "MAX_CLIENT_ID_LENGTH",
    "SESSION_ID_PREFIX",
    "check_client_id",
    "check_session_id",
    "is_valid_session_id",
    "new_session_id",
]

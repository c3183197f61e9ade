"""The audit log's line and head-file formats: canonical JSON, keyed MACs, parsing.

Private to :mod:`stuisession.security`; :mod:`stuisession.security.audit` documents the
format (``docs/security.md``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from stuisession.keys import Keyring

FORMAT_VERSION: Final = 1
#: ``prev`` of the first line
GENESIS: Final = "0" * 64
#: the events the library records; any other name matching ``[a-z][a-z0-9_]{0,31}`` is allowed
EVENTS: Final = frozenset(
    {
        "create",
        "restore",
        "update",
        "close",
        "deny",
        "expire",
        "rate_limit",
        "integrity_failure",
        "key_rotation",
        "gc",
    }
)
OUTCOMES: Final = frozenset({"ok", "denied", "error"})
MAX_REASON_LENGTH: Final = 200
MAX_CLIENT_ID_LENGTH: Final = 256
#: longer lines are never produced and are rejected when reading
MAX_LINE_BYTES: Final = 16 * 1024

_PURPOSE_CHAIN: Final = "audit-chain"
_PURPOSE_SESSION: Final = "audit-session-id"
_PURPOSE_HEAD: Final = "audit-head"
_DOMAIN_LINE: Final = b"stuisession-audit-line-v1\n"
_DOMAIN_HEAD: Final = b"stuisession-audit-head-v1\n"
_EVENT_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,31}")
_HEX64_RE: Final = re.compile(r"[0-9a-f]{64}")
_HEX32_RE: Final = re.compile(r"[0-9a-f]{32}")
_LINE_KEYS: Final = frozenset(
    {"v", "seq", "time", "event", "client_id", "session", "outcome", "reason", "kid", "prev", "mac"}
)
_HEAD_KEYS: Final = frozenset({"v", "seq", "last", "kid", "mac"})
_TAIL_CHUNK: Final = 4096
_Identity = tuple[int, int, int, int]


# -- canonical encoding and keys ---------------------------------------------------------
def _canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _hmac_hex(key: bytes, data: bytes) -> str:
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def _session_ref(keyring: Keyring, key_id: str, session_id: str) -> str:
    key = keyring.derive(_PURPOSE_SESSION, key_id)
    return _hmac_hex(key, session_id.encode("utf-8"))[:32]


def _line_mac(keyring: Keyring, key_id: str, body: dict[str, Any]) -> str:
    return _hmac_hex(keyring.derive(_PURPOSE_CHAIN, key_id), _DOMAIN_LINE + _canonical(body))


def _head_mac(keyring: Keyring, key_id: str, body: dict[str, Any]) -> str:
    return _hmac_hex(keyring.derive(_PURPOSE_HEAD, key_id), _DOMAIN_HEAD + _canonical(body))


def _iso(ts: float) -> str:
    dt = datetime.fromtimestamp(ts, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _head_path(path: Path) -> Path:
    return path.with_name(path.name + ".head")


# -- parsing (shared by the writer and the verifier) -------------------------------------
class _Bad(Exception):
    """A line or head that does not verify; the message is safe to show."""


def _parse_line(raw: bytes, keyring: Keyring) -> dict[str, Any]:
    """Parse and authenticate one line (without its newline); raise :class:`_Bad`."""
    try:
        obj = json.loads(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise _Bad("not valid JSON") from None
    if not isinstance(obj, dict) or set(obj) != _LINE_KEYS:
        raise _Bad("unexpected fields")
    if _canonical(obj) != raw:
        raise _Bad("not in canonical form")
    if obj["v"] != FORMAT_VERSION:
        raise _Bad("unknown format version")
    seq = obj["seq"]
    if type(seq) is not int or seq < 1:
        raise _Bad("bad sequence number")
    kid, mac, prev = obj["kid"], obj["mac"], obj["prev"]
    if not isinstance(kid, str) or not isinstance(mac, str) or not isinstance(prev, str):
        raise _Bad("bad field types")
    if _HEX64_RE.fullmatch(mac) is None or _HEX64_RE.fullmatch(prev) is None:
        raise _Bad("bad mac or prev")
    if kid not in keyring:
        raise _Bad("sealed with a key that is not in the keyring")
    body = {k: v for k, v in obj.items() if k != "mac"}
    if not hmac.compare_digest(_line_mac(keyring, kid, body), mac):
        raise _Bad("mac does not verify")
    return obj


def _parse_head(raw: bytes, keyring: Keyring) -> tuple[int, str]:
    """Parse and authenticate a head file; return ``(seq, last mac)``."""
    try:
        obj = json.loads(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise _Bad("head file is not valid JSON") from None
    if not isinstance(obj, dict) or set(obj) != _HEAD_KEYS or obj["v"] != FORMAT_VERSION:
        raise _Bad("head file has unexpected fields")
    if _canonical(obj) != raw:
        raise _Bad("head file is not in canonical form")
    seq, last, kid, mac = obj["seq"], obj["last"], obj["kid"], obj["mac"]
    if type(seq) is not int or seq < 0 or not isinstance(last, str) or not isinstance(mac, str):
        raise _Bad("head file has bad field types")
    if not isinstance(kid, str) or kid not in keyring:
        raise _Bad("head file sealed with a key that is not in the keyring")
    body = {k: v for k, v in obj.items() if k != "mac"}
    if not hmac.compare_digest(_head_mac(keyring, kid, body), mac):
        raise _Bad("head file mac does not verify")
    return seq, last


def _read_head(path: Path, keyring: Keyring) -> tuple[int, str] | None:
    try:
        raw = _head_path(path).read_bytes()
    except FileNotFoundError:
        return None
    if len(raw) > MAX_LINE_BYTES:
        raise _Bad("head file is too large")
    if not raw.endswith(b"\n"):
        raise _Bad("head file is truncated (no final newline)")
    return _parse_head(raw[:-1], keyring)


def _check_head_against_tail(
    head: tuple[int, str] | None, tail: dict[str, Any] | None
) -> str | None:
    """Why the head disagrees with the last line of the log, or None if consistent.

    The head is written after the line, so a crash between the two leaves the
    head exactly one line behind; that (and only that) is tolerated.
    """
    head_seq, head_last = head if head is not None else (0, GENESIS)
    tail_seq = 0 if tail is None else int(tail["seq"])
    if head is None and tail_seq > 1:
        return "head file is missing"
    if head_seq > tail_seq:
        return f"log truncated: head records seq {head_seq}, log ends at seq {tail_seq}"
    if tail is None:
        return None
    if head_seq == tail_seq:
        expected = str(tail["mac"])
    elif head_seq == tail_seq - 1:
        expected = str(tail["prev"])
    else:
        return f"head file is stale: records seq {head_seq}, log ends at seq {tail_seq}"
    if not hmac.compare_digest(head_last, expected):
        return "head file does not match the log"
    return None

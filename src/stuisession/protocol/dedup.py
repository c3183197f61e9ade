"""Replies remembered by request, so a resent request is not applied twice.

Upstream STUI clients use ZeroMQ REQ sockets: after a receive timeout they
open a new socket and send the same request again. If the first copy did
reach the server, applying the second would apply the change twice. The
handler therefore remembers the reply of every state-changing request, keyed
by its ``id`` together with a digest of its command and parameters, for a
while; a repeat gets the remembered reply. A repeat that arrives while the
first copy is still being handled waits for it.

A different request that reuses an ``id`` has a different digest and is
handled normally. Replies are remembered per caller (the authenticated key,
else the connection): a request with another caller's id and content is
handled as new, never answered with the other caller's reply.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Any

from stuisession import _json


def request_key(
    request_id: str | int, command: str, parameters: Any, caller: str = "local"
) -> bytes:
    """A digest identifying one request of one caller (its id, command and parameters).

    *caller* is :attr:`stuisession.security.identity.Caller.key`: the same
    request sent by two callers has two keys, so one caller's reply is never
    replayed to another (it may hold a new session's id and tokens).
    """
    h = hashlib.sha256()
    h.update(_field(caller.encode("utf-8", "surrogatepass")))
    h.update(repr(request_id).encode("utf-8", "surrogatepass"))
    h.update(b"\x00" + command.encode() + b"\x00")
    raw: Mapping[str, bytes] = getattr(parameters, "raw", None) or {}
    if raw:
        # raw request text kept by the parse: hash those bytes, not a re-encoding
        parameters = {
            k: ("\x00raw:" + hashlib.sha256(raw[k]).hexdigest()) if k in raw else v
            for k, v in parameters.items()
        }
    try:
        h.update(_json.dumps_sorted(parameters))
    except (TypeError, ValueError):
        # not encodable (e.g. an int beyond Python's str conversion limit): such a
        # request is refused by validation anyway; give it a key of its own
        h.update(secrets.token_bytes(16))
    return h.digest()


#: the durable key of the state-changing request being handled (see durable_key)
CURRENT_REQUEST: ContextVar[str | None] = ContextVar("stuisession_request", default=None)


def durable_key(key: bytes) -> str:
    """The form a session record keeps an applied request's key in: 32 hex characters.

    *key* is :func:`request_key` with the caller's dedup scope -- a digest over
    the caller's identity, the request id and its content, the reply cache's
    own key -- so a resend after a restart is recognised while another
    caller's request with the same id is not.
    """
    return key.hex()[:32]


def _field(data: bytes) -> bytes:
    # length-prefixed, so the caller can never run into the request id
    return len(data).to_bytes(4, "big") + data


def reply_cost(reply: dict[str, Any]) -> int:
    """Bytes a remembered *reply* holds: its encoded size (spliced state included) plus
    a fixed overhead for the entry."""
    try:
        return len(_json.dumps_with_raw(reply)) + 512
    except (TypeError, ValueError):
        return 1 << 62  # not encodable: never kept


class _Entry:
    __slots__ = ("cost", "done", "expires", "reply")

    def __init__(self, cost: int) -> None:
        self.done = threading.Event()
        self.reply: dict[str, Any] | None = None
        self.expires = 0.0
        self.cost = cost


#: error codes that a resend of the same request may not meet again: not remembered
TRANSIENT_ERRORS = frozenset({"RateLimited", "Busy", "StorageError", "InternalError"})


#: default bound of the reply cache (bytes of encoded replies): small for the memory
#: budget; a reply larger than the bound is not remembered (a resend is handled again
#: and the id-keyed revision checks still apply)
DEFAULT_REPLY_BYTES = 4 * 1024 * 1024


class ReplyCache:
    """Bounded (entries and estimated bytes), time-limited memory of replies. Thread-safe."""

    def __init__(
        self, ttl: float = 300.0, max_entries: int = 4096, max_bytes: int = DEFAULT_REPLY_BYTES
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    def _keep(self, key: bytes, entry: _Entry, reply: dict[str, Any]) -> None:
        """Remember *reply*, charged by its real encoded size (not the request's)."""
        cost = reply_cost(reply)
        with self._lock:
            if self._entries.get(key) is not entry:
                return  # evicted meanwhile: the reply is returned but not kept
            if cost > self.max_bytes:
                # never kept: a resend is handled again (a restore is read-only; for
                # changes the id-keyed revision checks still apply)
                self._bytes -= self._entries.pop(key).cost
                return
            self._bytes += cost - entry.cost
            entry.cost = cost
            entry.reply = reply
            while len(self._entries) > 1 and self._bytes > self.max_bytes:
                old_key, old = self._entries.popitem(last=False)
                self._bytes -= old.cost
                if old_key == key:  # pragma: no cover - the newest is last
                    break

    def run(
        self,
        key: bytes,
        compute: Callable[[], dict[str, Any]],
        *,
        cost: int = 1024,
        wait: float = 30.0,
    ) -> dict[str, Any]:
        """The remembered reply for *key*, or compute, remember and return it.

        *cost* is a first estimate of the reply's size in bytes, reserved while
        it is computed; once known, the reply is charged its real encoded size
        (:func:`reply_cost`) and one larger than ``max_bytes`` is not kept.
        """
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.done.is_set() and entry.expires < now:
                self._bytes -= self._entries.pop(key).cost
                entry = None
            owner = entry is None
            if entry is None:
                entry = self._entries[key] = _Entry(cost)
                self._bytes += cost
                while len(self._entries) > 1 and (
                    len(self._entries) > self.max_entries or self._bytes > self.max_bytes
                ):
                    self._bytes -= self._entries.popitem(last=False)[1].cost
            else:
                self._entries.move_to_end(key)
        if not owner:
            if entry.done.wait(wait) and entry.reply is not None:
                self.hits += 1
                return entry.reply
            return compute()  # the first copy is stuck or failed: handle this one
        try:
            reply = compute()
            details = reply.get("details") or {}
            if (
                reply.get("error_code") in TRANSIENT_ERRORS
                and details.get("reason") != "durability_unknown"  # it did commit
            ):
                # a resend must try again, not be told the same transient failure
                with self._lock:
                    if self._entries.get(key) is entry:
                        self._bytes -= self._entries.pop(key).cost
            else:
                self._keep(key, entry, reply)
            return reply
        finally:
            entry.expires = time.monotonic() + self.ttl
            entry.done.set()

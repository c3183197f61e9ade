"""Who is calling: the identity a transport vouches for, and what it may act as.

A :class:`Caller` travels with every request from the transport (the bridge)
down to the access checks of the service:

* ``Caller.anonymous()`` — the default of ``ProtocolHandler.handle`` without a
  caller: unauthenticated, like a plaintext peer (an in-process transport such
  as a stdio bridge relays untrusted input too).
* ``Caller.local()`` — the embedding application vouching for itself (admin
  tools): trusted, it may act as any client without a token and see operator
  statistics. No transport ever builds one.
* ``Caller.connection(routing_id)`` — an unauthenticated ZeroMQ peer
  (plaintext). It may act as any client id it can prove with a credential
  (session id in compat mode, resume/client token in strict mode).
* ``Caller.curve(public_key, client_ids, operator=...)`` — a peer that passed
  the CurveZMQ handshake with an allow-listed key. It may act **only** as the
  client ids its key is bound to; a session of another client looks exactly
  like one that does not exist.

``Caller.key`` separates callers in the reply (dedup) cache, so one caller's
remembered reply is never replayed to another. It is derived from the public
key (stable across reconnects) or the routing identity (one connection); it
is never shown to clients.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import secrets
from typing import Final

import attrs

__all__ = ["CURRENT_CALLER", "Caller", "fingerprint"]

#: a per-process key for log fingerprints: they correlate lines of one run only
_FINGERPRINT_KEY: Final = secrets.token_bytes(32)


def fingerprint(value: str | bytes, *, length: int = 12) -> str:
    """A short keyed fingerprint of a secret or identity, safe for logs and statistics.

    ``HMAC-SHA256(per-process key, value)`` as hex, truncated to *length*
    characters: lines of one process can be correlated, the value can not be
    recovered or confirmed by guessing outside the process.
    """
    data = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
    return hmac.new(_FINGERPRINT_KEY, data, hashlib.sha256).hexdigest()[:length]


@attrs.frozen
class Caller:
    """The transport's view of who sent a request.

    :ivar key: separates callers in the reply cache (never shown to clients).
    :ivar authenticated: True when a transport handshake proved the identity (CURVE).
    :ivar client_ids: the client ids this caller may act as; None: not restricted
        by the transport (in-process and plaintext callers).
    :ivar operator: may see per-connection statistics.
    :ivar trusted: an in-process caller (may list any client's sessions).
    """

    key: str
    authenticated: bool = False
    client_ids: frozenset[str] | None = None
    operator: bool = False
    trusted: bool = False

    @classmethod
    def local(cls) -> Caller:
        """The embedding application itself, trusted (never built by a transport)."""
        return _LOCAL

    @classmethod
    def anonymous(cls) -> Caller:
        """An unauthenticated in-process caller (the default)."""
        return _ANONYMOUS

    @classmethod
    def connection(cls, routing_id: bytes) -> Caller:
        """An unauthenticated peer, known only by its ZeroMQ routing identity."""
        return cls(key="conn:" + routing_id.hex())

    @classmethod
    def curve(
        cls, public_key: str, client_ids: frozenset[str], *, operator: bool = False
    ) -> Caller:
        """A peer authenticated by CurveZMQ with the z85 *public_key*."""
        return cls(
            key="curve:" + public_key,
            authenticated=True,
            client_ids=frozenset(client_ids),
            operator=operator,
        )

    def may_act_as(self, client_id: str) -> bool:
        """True unless the transport restricts this caller to other client ids."""
        return self.client_ids is None or client_id in self.client_ids

    def proves(self, client_id: str) -> bool:
        """True when the transport itself vouches for *client_id* (no token needed)."""
        return self.trusted or (self.authenticated and self.may_act_as(client_id))

    def __repr__(self) -> str:
        # never the key itself: it holds a routing identity or public key
        return (
            f"Caller(key={fingerprint(self.key)}, authenticated={self.authenticated}, "
            f"client_ids={sorted(self.client_ids) if self.client_ids is not None else None}, "
            f"operator={self.operator}, trusted={self.trusted})"
        )


_LOCAL: Final = Caller(key="local", operator=True, trusted=True)
_ANONYMOUS: Final = Caller(key="anonymous")

#: the caller of the request being handled (``ProtocolHandler.respond`` sets it for
#: the duration of one request; parameter parsing reads it into ``Credentials``)
CURRENT_CALLER: contextvars.ContextVar[Caller] = contextvars.ContextVar(
    "stuisession_caller",
    default=_ANONYMOUS,
)

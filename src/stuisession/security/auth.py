"""Resume tokens and client secrets for strict mode.

In strict mode knowing a session id is not enough to restore it: the client
must also present the resume token it was given when the session was created
(or last rotated). A token is bound to the client id and the session id; it
reveals neither, and carries no secret besides its MAC::

    v1.<key_id>.<issued_at>.<generation>.<mac>

    mac = base64url(HMAC-SHA256(keyring.derive("resume-token", key_id),
                                canonical("v1", key_id, client_id, session_id,
                                          issued_at, generation)))

``canonical`` length-prefixes every field, so no two field tuples share an
encoding. ``issued_at`` is whole Unix seconds; ``generation`` counts rotations.

* **Rotation of keys.** Tokens name the key that sealed them; they keep
  verifying after the keyring rotates, as long as that key stays in it.
* **Revocation.** The session stores its current token generation;
  :meth:`TokenAuthority.rotate` issues a token with generation + 1, and
  ``verify(..., min_generation=<stored generation>)`` refuses older ones.
* **Expiry.** With ``token_ttl`` set, tokens older than that are refused.

Every refusal raises ``AccessDenied("Invalid credentials")`` with no details,
whatever the reason (malformed, unknown key, wrong client or session, bad MAC,
expired, revoked), so a caller learns nothing about which check failed. The
MAC is checked (in constant time) before expiry and generation, so those are
only ever reported to holders of a genuine token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import struct
from typing import Final, NoReturn

from stuisession.clock import Clock, SystemClock
from stuisession.errors import AccessDenied, ConfigurationError
from stuisession.keys import Keyring

__all__ = [
    "TokenAuthority",
    "client_secret_digest",
    "new_client_secret",
    "verify_client_secret",
]

VERSION_TAG: Final = "v1"
_PURPOSE: Final = "resume-token"
_DOMAIN: Final = b"stuisession-resume-token"
_DENIED: Final = "Invalid credentials"
#: longer strings are refused before any parsing
MAX_TOKEN_LENGTH: Final = 256
#: with a ``token_ttl``, tokens issued this far in the future (clock skew) are still accepted
MAX_CLOCK_SKEW: Final = 300
_MAX_GENERATION: Final = 2**32 - 1
_TOKEN_RE: Final = re.compile(
    r"v1\.(?P<kid>[A-Za-z0-9._-]{1,64})\.(?P<issued>0|[1-9][0-9]{0,11})"
    r"\.(?P<gen>0|[1-9][0-9]{0,9})\.(?P<mac>[A-Za-z0-9_-]{43})"
)


def _deny() -> NoReturn:
    raise AccessDenied(_DENIED)


def _field(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class TokenAuthority:
    """Issues and verifies resume tokens bound to a client id and a session id.

    Thread-safe (it holds no mutable state besides the replaceable keyring).
    """

    def __init__(
        self, keyring: Keyring, *, clock: Clock | None = None, token_ttl: int | None = None
    ) -> None:
        if token_ttl is not None and (not isinstance(token_ttl, int) or token_ttl <= 0):
            raise ConfigurationError("token_ttl must be a positive number of seconds or None")
        self.keyring = keyring
        self.clock: Clock = clock or SystemClock()
        self.token_ttl = token_ttl

    def _mac(
        self, key_id: str, client_id: str, session_id: str, issued_at: int, generation: int
    ) -> str:
        key = self.keyring.derive(_PURPOSE, key_id)
        msg = b"".join(
            (
                _field(_DOMAIN),
                _field(VERSION_TAG.encode()),
                _field(key_id.encode()),
                _field(client_id.encode("utf-8", "surrogatepass")),
                _field(session_id.encode("utf-8", "surrogatepass")),
                _field(str(issued_at).encode()),
                _field(str(generation).encode()),
            )
        )
        return _b64(hmac.new(key, msg, hashlib.sha256).digest())

    def issue(self, client_id: str, session_id: str, *, generation: int = 0) -> str:
        """A fresh token for *client_id* on *session_id*, sealed with the current key."""
        if not isinstance(generation, int) or not 0 <= generation <= _MAX_GENERATION:
            raise ValueError("generation must be an integer in [0, 2**32)")
        if not isinstance(client_id, str) or not isinstance(session_id, str):
            raise TypeError("client_id and session_id must be strings")
        kid = self.keyring.current_id
        issued_at = max(0, int(self.clock.now()))
        mac = self._mac(kid, client_id, session_id, issued_at, generation)
        return f"{VERSION_TAG}.{kid}.{issued_at}.{generation}.{mac}"

    def rotate(self, client_id: str, session_id: str, current_generation: int) -> tuple[str, int]:
        """Issue a token of generation ``current_generation + 1``.

        Returns ``(token, new_generation)``: store the new generation with the
        session (only then hand out the token) and pass it as ``min_generation``
        to :meth:`verify`, so every older token is refused.
        """
        new_generation = current_generation + 1
        return self.issue(client_id, session_id, generation=new_generation), new_generation

    def verify(
        self, token: object, client_id: str, session_id: str, *, min_generation: int = 0
    ) -> None:
        """Return if *token* is a valid, unexpired, unrevoked token for this client
        and session; raise ``AccessDenied("Invalid credentials")`` otherwise."""
        if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
            _deny()
        if not isinstance(client_id, str) or not isinstance(session_id, str):
            _deny()
        m = _TOKEN_RE.fullmatch(token)
        if m is None:
            _deny()
        kid = m["kid"]
        if kid not in self.keyring:
            _deny()
        issued_at, generation = int(m["issued"]), int(m["gen"])
        expected = self._mac(kid, client_id, session_id, issued_at, generation)
        if not hmac.compare_digest(expected, m["mac"]):
            _deny()
        if self.token_ttl is not None:
            now = self.clock.now()
            if now - issued_at > self.token_ttl or issued_at - now > MAX_CLOCK_SKEW:
                _deny()
        if generation < min_generation:
            _deny()

    def is_valid(
        self, token: object, client_id: str, session_id: str, *, min_generation: int = 0
    ) -> bool:
        """:meth:`verify` as a boolean."""
        try:
            self.verify(token, client_id, session_id, min_generation=min_generation)
        except AccessDenied:
            return False
        return True

    def __repr__(self) -> str:
        return f"TokenAuthority(keyring={self.keyring!r}, token_ttl={self.token_ttl!r})"


# -- client secrets ----------------------------------------------------------------------
def new_client_secret() -> str:
    """A fresh 256-bit client secret, URL-safe (43 characters)."""
    return secrets.token_urlsafe(32)


def client_secret_digest(secret: str) -> str:
    """The SHA-256 hex digest to store instead of a client secret.

    Client secrets are 256 random bits, so a fast hash suffices (no password
    hashing needed); the digest lets a config file list clients without
    holding their secrets.
    """
    return hashlib.sha256(b"stuisession-client-secret\0" + secret.encode("utf-8")).hexdigest()


def verify_client_secret(secret: object, digest: str) -> bool:
    """True if *secret* hashes to *digest* (compared in constant time)."""
    if not isinstance(secret, str) or len(secret) > MAX_TOKEN_LENGTH:
        return False
    candidate = client_secret_digest(secret)
    return hmac.compare_digest(candidate.encode(), digest.encode("ascii", "replace"))

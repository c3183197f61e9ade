"""Watch subscriptions: opaque notification topics and the tokens that prove a holder.

A bridge serving change notices (``serve --notify``, ``docs/notifications.md``)
sends each session's notices on an opaque *topic*: a keyed hash of the session id,
so a notice never shows the raw id. A subscriber proves it holds the session with
a *subscription token* that the ``watch_session`` command hands to a caller who
presented the session's credentials. The token seals the session id and the
session's token generation with AES-GCM (``cryptography``), under a key derived
from the store's keyring: every bridge sharing the store (and its keyring)
verifies every other's tokens, and a token issued before ``rotate_credentials``
is refused afterwards (the generation is checked against the session record).

Shapes: a topic is ``b"n1."`` + 24 characters of URL-safe base64 (18 bytes of
HMAC-SHA256); a token is ``"w1."`` + URL-safe base64 of ``key id | nonce |
ciphertext``, under 200 characters.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import json
import os
import threading

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from stuisession.errors import AccessDenied
from stuisession.keys import Keyring

__all__ = ["TOKEN_PREFIX", "TOPIC_PREFIX", "SubscriptionAuthority"]

TOPIC_PREFIX = b"n1."
TOKEN_PREFIX = "w1."  # noqa: S105 - a format marker, not a secret
#: a subscription longer than this is refused unread (bytes)
MAX_TOKEN_BYTES = 512
_AAD = b"stuisession watch token v1"
#: topics remembered (about 150 bytes each)
TOPIC_CACHE = 4096


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SubscriptionAuthority:
    """Derives topics and issues/opens subscription tokens with *keyring*'s keys."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring
        #: (key id, session id) -> topic: a notice per update must not pay an HMAC
        self._topics: collections.OrderedDict[tuple[str, str], bytes] = collections.OrderedDict()
        self._lock = threading.Lock()

    def topic(self, session_id: str) -> bytes:
        """The opaque notification topic of *session_id* (under the current key).

        Remembered for the :data:`TOPIC_CACHE` sessions used last (keyed by the key
        id too, so a rotated keyring gives new topics at once). Thread-safe.
        """
        kid = self.keyring.current_id
        cache_key = (kid, session_id)
        with self._lock:
            topic = self._topics.get(cache_key)
            if topic is not None:
                self._topics.move_to_end(cache_key)
                return topic
        key = self.keyring.derive("notify-topic", kid)
        mac = hmac.new(key, session_id.encode("utf-8"), hashlib.sha256).digest()[:18]
        topic = TOPIC_PREFIX + _b64(mac).encode("ascii")
        with self._lock:
            self._topics[cache_key] = topic
            if len(self._topics) > TOPIC_CACHE:
                self._topics.popitem(last=False)
        return topic

    def issue(self, session_id: str, generation: int) -> str:
        """A token proving its holder may watch *session_id* (token *generation*)."""
        kid = self.keyring.current_id
        nonce = os.urandom(12)
        body = json.dumps({"s": session_id, "g": generation}, separators=(",", ":")).encode()
        sealed = AESGCM(self.keyring.derive("watch-token", kid)).encrypt(nonce, body, _AAD)
        kid_bytes = kid.encode("ascii")
        return TOKEN_PREFIX + _b64(bytes([len(kid_bytes)]) + kid_bytes + nonce + sealed)

    def open(self, token: bytes | str) -> tuple[str, int]:
        """``(session_id, generation)`` sealed in *token*.

        Raises :class:`AccessDenied` for anything not issued by a key of this
        keyring (malformed, tampered, unknown key, over ``MAX_TOKEN_BYTES``).
        """
        try:
            text = token.decode("ascii") if isinstance(token, bytes) else token
            if len(text) > MAX_TOKEN_BYTES or not text.startswith(TOKEN_PREFIX):
                raise ValueError
            raw = _unb64(text[len(TOKEN_PREFIX) :])
            n = raw[0]
            kid = raw[1 : 1 + n].decode("ascii")
            nonce, sealed = raw[1 + n : 13 + n], raw[13 + n :]
            if kid not in self.keyring or len(nonce) != 12:
                raise ValueError
            body = AESGCM(self.keyring.derive("watch-token", kid)).decrypt(nonce, sealed, _AAD)
            doc = json.loads(body)
            sid, gen = doc["s"], doc["g"]
            if not isinstance(sid, str) or type(gen) is not int:
                raise ValueError
        except (ValueError, IndexError, KeyError, TypeError, InvalidTag, UnicodeError):
            raise AccessDenied("invalid subscription token") from None
        return sid, gen

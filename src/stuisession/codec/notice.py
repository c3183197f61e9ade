"""Sealed change notices: what one process tells another that a session changed.

A :class:`~stuisession.stores.base.ChangeEvent` names its session by the raw id, so
on a shared channel (Redis Pub/Sub, which any client of that Redis can subscribe
to) it is sealed first: ``b"STN1" || len(kid) (1 byte) || kid || nonce (12) ||
AES-256-GCM(notice JSON)`` under a key derived with HKDF for the purpose
``change-notices`` from the keyring's current key. The associated data is the
prefix up to the nonce plus the channel name, so a notice cannot be replayed on
another store's channel. A subscriber without the keyring sees only ciphertext
and cannot forge a notice (``tests/test_redis_notices.py``).

Notices are hints (docs/notifications.md): one that does not open is dropped.
"""

from __future__ import annotations

from stuisession.codec import _envelope
from stuisession.errors import IntegrityError
from stuisession.keys import Keyring

__all__ = ["NOTICE_MAGIC", "NOTICE_PURPOSE", "open_notice", "seal_notice"]

NOTICE_MAGIC = b"STN1"
#: HKDF purpose of the key that seals change notices
NOTICE_PURPOSE = "change-notices"


def seal_notice(keyring: Keyring, payload: bytes, channel: bytes) -> bytes:
    """*payload* (a notice's JSON) sealed for *channel* with the keyring's current key."""
    kid = keyring.current_id
    kid_bytes = kid.encode()
    head = NOTICE_MAGIC + bytes([len(kid_bytes)]) + kid_bytes
    return head + _envelope.encrypt(keyring.derive(NOTICE_PURPOSE, kid), payload, head + channel)


def open_notice(keyring: Keyring, data: bytes, channel: bytes) -> bytes | None:
    """The payload of a :func:`seal_notice` output for *channel*; None if it does not open.

    None for: another format, an unknown key id, a notice sealed for another channel,
    or any damage (AES-GCM's tag covers the ciphertext and the associated data).
    """
    if not data.startswith(NOTICE_MAGIC) or len(data) < len(NOTICE_MAGIC) + 1:
        return None
    n = data[len(NOTICE_MAGIC)]
    end = len(NOTICE_MAGIC) + 1 + n
    try:
        kid = data[len(NOTICE_MAGIC) + 1 : end].decode("ascii")
    except UnicodeDecodeError:
        return None
    if kid not in keyring:
        return None
    try:
        return _envelope.decrypt(
            keyring.derive(NOTICE_PURPOSE, kid), data[end:], data[:end] + channel, what="notice"
        )
    except IntegrityError:
        return None

"""The one sealing envelope shared by snapshots and journal records.

Sealing is zstd (optional) -> AES-256-GCM (optional, ``nonce || ciphertext+tag``) ->
HMAC-SHA256 over the framed bytes. The framing (what the AAD and the MAC cover) belongs to
each format; this module holds the primitives and the ONE decoded-size guard, so a snapshot
and a journal record refuse the same oversized payload the same way
(:class:`~stuisession.errors.StateTooLarge`; ``tests/test_envelope.py``).

Private to :mod:`stuisession.codec`.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import threading

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from stuisession.errors import IntegrityError, StateTooLarge

TAG_SIZE = 32
NONCE_SIZE = 12
_GCM_TAG_SIZE = 16


_local = threading.local()


def compress(data: bytes, level: int = 3) -> bytes:
    """*data* as one zstd frame that declares its content size."""
    # ZstdCompressor objects are not thread-safe: one per thread and level (making
    # one costs more than compressing a small state)
    compressors: dict[int, zstandard.ZstdCompressor] | None = getattr(_local, "zstd", None)
    if compressors is None:
        compressors = _local.zstd = {}
    c = compressors.get(level)
    if c is None:
        c = compressors[level] = zstandard.ZstdCompressor(level=level)
    out: bytes = c.compress(data)
    return out


@functools.lru_cache(maxsize=64)
def _aead(enc_key: bytes) -> AESGCM:
    # AESGCM keeps only the key; each call makes its own cipher context (thread-safe)
    return AESGCM(enc_key)


def encrypt(enc_key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """``nonce || AES-256-GCM(plaintext, aad)`` with a fresh random 12-byte nonce."""
    nonce = os.urandom(NONCE_SIZE)
    return nonce + _aead(enc_key).encrypt(nonce, plaintext, aad)


def decrypt(enc_key: bytes, sealed: bytes, aad: bytes, *, what: str) -> bytes:
    """Open ``nonce || ciphertext``; :class:`IntegrityError` naming *what* if it fails."""
    if len(sealed) < NONCE_SIZE + _GCM_TAG_SIZE:
        raise IntegrityError(f"{what} is too short to be encrypted")
    try:
        return _aead(enc_key).decrypt(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], aad)
    except (InvalidTag, ValueError):
        raise IntegrityError(f"{what} failed to decrypt") from None


def mac(mac_key: bytes, *parts: bytes | memoryview) -> bytes:
    """HMAC-SHA256 over the concatenation of *parts* (32 bytes)."""
    m = hmac.new(mac_key, digestmod=hashlib.sha256)
    for p in parts:
        m.update(p)
    return m.digest()


def tag_matches(expected: bytes, actual: bytes | memoryview) -> bool:
    """Constant-time comparison of two tags."""
    return hmac.compare_digest(expected, bytes(actual))


def check_size(size: int | None, max_bytes: int) -> None:
    """:class:`StateTooLarge` when a decoded payload of *size* bytes (None: unknown, but
    known to be over) exceeds *max_bytes*."""
    if size is None or size > max_bytes:
        what = "over" if size is None else f"{size} bytes, over"
        raise StateTooLarge(f"stored state is {what} the {max_bytes}-byte limit", part="state")


def decompress(data: bytes, max_bytes: int, *, what: str) -> bytes:
    """Decompress one zstd frame, never producing more than *max_bytes*.

    The frame's declared content size is checked before anything is allocated (it may claim
    terabytes); a frame that declares no size is decompressed with *max_bytes* as the bound.
    Oversized: :class:`StateTooLarge`; damaged: :class:`IntegrityError` naming *what*.
    """
    try:
        size = zstandard.frame_content_size(data)
    except zstandard.ZstdError:
        raise IntegrityError(f"{what} failed to decompress") from None
    if size >= 0:
        check_size(size, max_bytes)
    try:
        out: bytes = zstandard.ZstdDecompressor().decompress(data, max_output_size=max_bytes)
    except zstandard.ZstdError:
        if size < 0 and _exceeds(data, max_bytes):
            check_size(None, max_bytes)
        raise IntegrityError(f"{what} failed to decompress") from None
    check_size(len(out), max_bytes)
    return out


def _exceeds(data: bytes, max_bytes: int) -> bool:
    """True when a frame without a content size decompresses to over *max_bytes*."""
    total = 0
    try:
        with zstandard.ZstdDecompressor().stream_reader(data) as reader:
            while chunk := reader.read(1 << 20):
                total += len(chunk)
                if total > max_bytes:
                    return True
    except zstandard.ZstdError:
        pass
    return False

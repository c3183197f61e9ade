"""Key management: a keyring of 256-bit master keys, each with an id.

Snapshots name the key they were sealed with (``key_id`` in the header). New
writes use the keyring's current key; older keys stay to read older snapshots.
Per-purpose keys (HMAC, AES-GCM) are derived from a master key with HKDF so
the same secret is never used for two algorithms.

Key files hold JSON and must not be readable by group or others; the library
refuses to use one that is (as ssh does). Secrets never appear in ``repr``,
logs or error messages.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import secrets
import stat
import time
from collections.abc import Mapping
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from stuisession import _fs
from stuisession.errors import ConfigurationError

KEY_BYTES = 32
ENV_KEYRING = "STUISESSION_KEYRING"
_KEY_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _derive(master: bytes, purpose: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"stuisession/v1/" + purpose
    ).derive(master)


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8", "replace"), b.encode("utf-8", "replace"))


def _key_check(key_id: str, key: bytes) -> str:
    """A key's check value: names a damaged key without revealing it (64 bits)."""
    mac = hmac.new(_derive(key, b"key-check"), key_id.encode("ascii", "replace"), hashlib.sha256)
    return mac.hexdigest()[:16]


def new_key_id() -> str:
    """A unique, sortable key id such as ``k20261128T080000-3fa2``."""
    return time.strftime("k%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2)


class Keyring:
    """A set of master keys by id, one of them current (used for new writes)."""

    def __init__(self, keys: Mapping[str, bytes], current: str) -> None:
        if not keys:
            raise ConfigurationError("a keyring needs at least one key")
        for key_id, key in keys.items():
            if _KEY_ID_RE.fullmatch(key_id) is None:
                raise ConfigurationError(f"invalid key id {key_id!r}")
            if len(key) != KEY_BYTES:
                raise ConfigurationError(f"key {key_id!r} must be {KEY_BYTES} bytes")
        if current not in keys:
            raise ConfigurationError(f"current key {current!r} is not in the keyring")
        self._keys = dict(keys)
        self._current = current
        self._mac: dict[str, bytes] = {}
        self._enc: dict[str, bytes] = {}
        self._derived: dict[tuple[str, str], bytes] = {}

    # -- construction -------------------------------------------------------------
    @classmethod
    def generate(cls, key_id: str | None = None) -> Keyring:
        """A keyring with one fresh random key."""
        kid = key_id or new_key_id()
        return cls({kid: secrets.token_bytes(KEY_BYTES)}, kid)

    @classmethod
    def from_json(cls, text: str | bytes) -> Keyring:
        """Parse ``{"current": id, "keys": {id: base64-key}, "checks": {...}, "mac": hex}``.

        ``checks`` (one check value per key) and ``mac`` (over the whole
        document) are written by :meth:`to_json` and verified when present, so
        a damaged key is named instead of silently failing every snapshot it
        sealed. Files without them (older releases, hand-made keyrings) are
        accepted. :class:`ConfigurationError` on any failure; the message never
        holds key material.
        """
        try:
            doc = json.loads(text)
            keys = {str(k): base64.b64decode(v, validate=True) for k, v in doc["keys"].items()}
            current = str(doc["current"])
            checks = doc.get("checks")
            mac = doc.get("mac")
            if checks is not None and not isinstance(checks, dict):
                raise TypeError
            if mac is not None and not isinstance(mac, str):
                raise TypeError
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
            # never include the text: it holds secrets
            raise ConfigurationError("keyring is not valid JSON of the expected form") from None
        if (checks is None) != (mac is None):
            raise ConfigurationError("keyring is damaged (its checks or its mac are missing)")
        if checks is not None:
            if set(checks) != set(keys):
                raise ConfigurationError("keyring is damaged (its checks do not match its keys)")
            for kid, key in keys.items():
                if len(key) != KEY_BYTES or not _same(str(checks[kid]), _key_check(kid, key)):
                    raise ConfigurationError(
                        f"key {kid!r} is damaged (its check value does not match); the "
                        "snapshots it sealed can not be opened until it is restored",
                        key_id=kid,
                    )
        ring = cls(keys, current)
        if mac is not None:
            body = {k: v for k, v in doc.items() if k != "mac"}
            if not _same(mac, ring._file_mac(body)):
                raise ConfigurationError(
                    "keyring is damaged or was edited (its mac does not match)"
                )
        return ring

    def _file_mac(self, body: dict[str, object]) -> str:
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        key = self.derive("keyring-file")
        return hmac.new(key, b"stuisession-keyring\n" + canonical, hashlib.sha256).hexdigest()

    def to_json(self) -> str:
        """The keyring as JSON (contains secrets: write it only to a 0600 file)."""
        body: dict[str, object] = {
            "version": 1,
            "current": self._current,
            "keys": {k: base64.b64encode(v).decode() for k, v in self._keys.items()},
            "checks": {k: _key_check(k, v) for k, v in self._keys.items()},
        }
        body["mac"] = self._file_mac(body)
        return json.dumps(body, indent=2)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Keyring | None:
        """The keyring in ``$STUISESSION_KEYRING`` (same JSON as a key file), if set."""
        env = os.environ if environ is None else environ
        text = env.get(ENV_KEYRING)
        return None if not text else cls.from_json(text)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Keyring:
        """Read a key file, refusing one that group or others can read or write."""
        p = Path(path)
        try:
            fd = os.open(p, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            raise ConfigurationError(f"key file {p} does not exist") from None
        except OSError as exc:
            raise ConfigurationError(f"key file {p} can not be opened: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise ConfigurationError(
                    f"key file {p} is accessible by group or others "
                    f"(mode {stat.S_IMODE(mode):o}); chmod 600 it"
                )
            text = fh.read()
        try:
            return cls.from_json(text)
        except ConfigurationError as exc:
            raise ConfigurationError(
                f"key file {p}: {exc.message}; restore it from a backup of the store "
                "(a new key would leave every session unreadable)",
                **exc.details,
            ) from None

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str]) -> Keyring:
        """Read the key file at *path*, creating it (mode 0600) with a fresh key if absent."""
        p = Path(path)
        if p.exists():
            return cls.load(p)
        ring = cls.generate()
        try:
            ring.save(p, exclusive=True)
        except FileExistsError:
            return cls.load(p)  # another process created it first: use theirs
        return ring

    def save(self, path: str | os.PathLike[str], *, exclusive: bool = False) -> None:
        """Write the keyring durably to *path* with mode 0600 (atomic replace)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        # with *exclusive*, link() publishes the complete file or fails if one
        # exists, so a process starting at the same moment never reads a
        # half-written key
        _fs.atomic_write(p, self.to_json().encode(), create_only=exclusive)

    # -- use ----------------------------------------------------------------------
    @property
    def current_id(self) -> str:
        """The id of the key used for new writes."""
        return self._current

    @property
    def key_ids(self) -> list[str]:
        """All key ids, in insertion order."""
        return list(self._keys)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    def mac_key(self, key_id: str) -> bytes:
        """The HMAC-SHA256 key derived from master key *key_id* (KeyError if unknown)."""
        k = self._mac.get(key_id)
        if k is None:
            k = self._mac[key_id] = _derive(self._keys[key_id], b"hmac-sha256")
        return k

    def enc_key(self, key_id: str) -> bytes:
        """The AES-256-GCM key derived from master key *key_id* (KeyError if unknown)."""
        k = self._enc.get(key_id)
        if k is None:
            k = self._enc[key_id] = _derive(self._keys[key_id], b"aes-256-gcm")
        return k

    def derive(self, purpose: str, key_id: str | None = None) -> bytes:
        """A 32-byte key for another *purpose* (e.g. audit hashing, tokens)."""
        kid = key_id or self._current
        k = self._derived.get((kid, purpose))
        if k is None:  # HKDF per token or audit line would cost more than the MAC itself
            k = self._derived[(kid, purpose)] = _derive(self._keys[kid], purpose.encode())
        return k

    def rotated(self, key_id: str | None = None) -> Keyring:
        """A new keyring with a fresh current key; older keys are kept for reading."""
        kid = key_id or new_key_id()
        if kid in self._keys:
            raise ConfigurationError(f"key id {kid!r} already exists")
        keys = dict(self._keys)
        keys[kid] = secrets.token_bytes(KEY_BYTES)
        return Keyring(keys, kid)

    def __repr__(self) -> str:
        return f"Keyring(current={self._current!r}, keys={len(self._keys)})"

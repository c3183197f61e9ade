"""``format.json``: what a file store records about itself, sealed with a keyring-derived MAC.

The file is authenticated (format version 3 and later), so an edited, damaged or
foreign copy is refused with a :class:`~stuisession.errors.ConfigurationError` that
names the file; it is never re-created in an existing store (see ``docs/file-store.md``).
"""

from __future__ import annotations

import hmac
import json
from pathlib import Path
from typing import Any

import attrs

from stuisession.errors import ConfigurationError
from stuisession.keys import Keyring

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MAX_STRIPES",
    "READABLE_VERSIONS",
    "StoreFormat",
    "parse_format",
    "seal_format",
]

FORMAT_NAME = "stuisession-file-store"
#: version 2 adds client-sharded session ids (the client index); version 3
#: authenticates format.json and keeps a high-water mark per session. Stores
#: of versions 1 and 2 are migrated to 3 when opened (a v1 store keeps listing
#: a client's sessions by a scan); version 4 names files by a keyed hash of the
#: session id (older stores are renamed when opened)
FORMAT_VERSION = 4
READABLE_VERSIONS = (1, 2, 3, 4)
_FORMAT_PURPOSE = "file-store-format"
MAX_STRIPES = 4096


@attrs.frozen
class StoreFormat:
    """What ``format.json`` records."""

    version: int
    lock_stripes: int
    #: keys the client -> shard map (None: a version-1 store)
    shard_key: bytes | None
    #: the file must be rewritten as the current version (marks and names first)
    migrate: bool = False
    #: the key id whose derived key names files (None: files are named by ids, before v4)
    name_kid: str | None = None


def _format_mac(keyring: Keyring, key_id: str, body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    key = keyring.derive(_FORMAT_PURPOSE, key_id)
    return hmac.new(key, b"stuisession-format\n" + canonical, "sha256").hexdigest()


def seal_format(keyring: Keyring, body: dict[str, Any]) -> dict[str, Any]:
    """*body* with ``kid`` and ``mac`` added (format version 3)."""
    doc = dict(body, kid=keyring.current_id)
    doc["mac"] = _format_mac(keyring, keyring.current_id, doc)
    return doc


def parse_format(meta: Path, text: str, keyring: Keyring) -> StoreFormat:
    """The checked content of format.json (ConfigurationError naming *meta*)."""
    restore = "; restore it from a backup of the store"
    try:
        found = json.loads(text)
        name, version, stripes = found["format"], found["version"], found["lock_stripes"]
    except (ValueError, KeyError, TypeError):
        raise ConfigurationError(f"{meta} is not a valid file store format file{restore}") from None
    if name != FORMAT_NAME or version not in READABLE_VERSIONS or type(version) is not int:
        raise ConfigurationError(f"{meta}: unsupported store format {name!r} v{version!r}")
    if version >= 3:
        kid, mac = found.get("kid"), found.get("mac")
        if not isinstance(kid, str) or not isinstance(mac, str) or kid not in keyring:
            raise ConfigurationError(
                f"{meta} is damaged, or sealed with a key that is not in this keyring "
                f"(wrong keyring?){restore}"
            )
        body = {k: v for k, v in found.items() if k != "mac"}
        expected = _format_mac(keyring, kid, body)
        if not hmac.compare_digest(expected.encode(), mac.encode("utf-8", "replace")):
            raise ConfigurationError(
                f"{meta} is damaged or was edited (its mac does not match){restore}"
            )
    if type(stripes) is not int or not 1 <= stripes <= MAX_STRIPES:
        raise ConfigurationError(f"{meta} has an invalid lock_stripes{restore}")
    shard_key: bytes | None = None
    raw_key = found.get("client_shard_key")
    if version >= 2 and (version == 2 or raw_key is not None):
        try:
            shard_key = bytes.fromhex(raw_key)
        except (KeyError, TypeError, ValueError):
            raise ConfigurationError(f"{meta} has no valid client_shard_key{restore}") from None
    name_kid: str | None = None
    if version >= 4:
        name_kid = found.get("name_kid")
        if not isinstance(name_kid, str) or name_kid not in keyring:
            raise ConfigurationError(
                f"{meta} names files with a key that is not in this keyring (its key "
                f"{name_kid!r} was removed?): keep every key a store was created with"
            )
    return StoreFormat(
        version=version,
        lock_stripes=stripes,
        shard_key=shard_key,
        migrate=version < FORMAT_VERSION,
        name_kid=name_kid,
    )

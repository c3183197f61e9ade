"""Key names of a Redis store (layouts 1, 2 and 3, see the package docstring) and small codecs."""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import attrs

from stuisession.errors import ConfigurationError
from stuisession.keys import Keyring
from stuisession.state.model import SessionInfo, SessionStatus
from stuisession.stores.redis.errors import ErrorMapper

BATCH = 256
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
#: where a layout-2/3 session id carries its client's slot tag
TAG = slice(8, 11)
LAYOUT_2 = b"2"
#: ``P:layout`` of a layout-3 store: ``3:<key id>``, the key id naming the master key
#: whose derived key (purpose :data:`NAME_PURPOSE`) hashes ids into key names
LAYOUT_3 = b"3:"
#: HKDF purpose of the key that turns session and client ids into key names (layout 3)
NAME_PURPOSE = "redis-key-names"
#: hex characters of a layout-3 session name (128 bits of HMAC-SHA256)
NAME_CHARS = 32
#: a layout-3 index member: the slot tag (3 characters), then the session name
MEMBER_SIZE = TAG.stop - TAG.start + NAME_CHARS
_HEX = frozenset("0123456789abcdef")
_TAG_CHARS = frozenset(_B64)
_SESSION_DOMAIN = b"stuisession-redis-session\n"
_CLIENT_DOMAIN = b"stuisession-redis-client\n"
log = logging.getLogger("stuisession.stores.redis")


def record_token(info: SessionInfo) -> bytes:
    """The compare-and-swap token of a record as kept in the ``ver`` field."""
    if info.cas_token == (0, ""):
        return b""  # written before records had versions: no ``ver`` field
    return f"{info.version}:{info.lineage}".encode()


def client_hash(client_id: str) -> str:
    """The name of *client_id* in layout 1/2 key names: SHA-256 hex (any client id is
    key-safe). Layout 3 uses a keyed hash instead (:meth:`Keys.chash`)."""
    return hashlib.sha256(client_id.encode("utf-8", "surrogatepass")).hexdigest()


def client_tag(client_id: str) -> str:
    """The layout-2 slot tag of *client_id*: three URL-safe characters (18 bits).

    Layout 3 derives it from the keyed client hash (:meth:`RedisStore.client_tag`)."""
    return tag_of_hash(client_hash(client_id))


def tag_of_hash(chash: str) -> str:
    d = bytes.fromhex(chash[:6])
    return _B64[d[0] % 64] + _B64[d[1] % 64] + _B64[d[2] % 64]


def batches(items: Sequence[str], size: int = BATCH) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


def active_until(info: SessionInfo) -> float:
    """When *info* stops being active (0 when it is closed or expired already)."""
    if info.status is not SessionStatus.ACTIVE:
        return 0.0
    end = info.expires_at
    if info.absolute_expires_at is not None:
        end = min(end, info.absolute_expires_at)
    return end


@attrs.frozen
class Keys:
    """The key names of one store: *prefix*, key *layout* (1, 2 or 3), on a *cluster* or not.

    Layout 3 names sessions and clients by keyed hashes under *name_key* (32 bytes,
    required there): no key name or index member holds a session or client id.
    """

    prefix: str
    layout: int
    cluster: bool
    name_key: bytes | None = attrs.field(default=None, repr=False)

    @property
    def hashed(self) -> bool:
        """True when key names hold keyed hashes, not ids (layout 3)."""
        return self.layout == 3

    def chash(self, client_id: str) -> str:
        """The name of *client_id* in key names and the ``client`` field (64 hex chars)."""
        if self.name_key is None or not self.hashed:
            return client_hash(client_id)
        data = _CLIENT_DOMAIN + client_id.encode("utf-8", "surrogatepass")
        return hmac.new(self.name_key, data, hashlib.sha256).hexdigest()

    def slot_tag(self, client_id: str) -> str:
        """The slot tag a new session id of *client_id* carries (layouts 2 and 3)."""
        return tag_of_hash(self.chash(client_id))

    def name(self, session_id: str) -> str:
        """The layout-3 name of *session_id*: HMAC-SHA256 under the name key, 32 hex chars."""
        assert self.name_key is not None
        d = hmac.new(self.name_key, _SESSION_DOMAIN + session_id.encode("ascii"), hashlib.sha256)
        return d.hexdigest()[:NAME_CHARS]

    def member(self, session_id: str) -> str:
        """What stands for *session_id* in the index zsets: the id (layouts 1/2), else
        its slot tag and name (layout 3), from which its key follows (:meth:`of_member`)."""
        if not self.hashed:
            return session_id
        return session_id[TAG] + self.name(session_id)

    def is_member(self, member: str) -> bool:
        """True if *member* is well formed for this layout (ids are checked elsewhere)."""
        if not self.hashed:
            return True
        return (
            len(member) == MEMBER_SIZE
            and _TAG_CHARS.issuperset(member[:3])
            and _HEX.issuperset(member[3:])
        )

    def of_member(self, member: str) -> str:
        """The session hash of an index *member* (see :meth:`member`)."""
        if not self.hashed:
            return self.session(member)
        return f"{self.prefix}:s:{{{member[:3]}}}:{member[3:]}"

    def matches(self, member: str, session_id: str) -> bool:
        """True if the record of *session_id* belongs under index *member* (constant time)."""
        return hmac.compare_digest(self.member(session_id), member)

    @property
    def all(self) -> str:
        return f"{self.prefix}:all"

    @property
    def channel(self) -> str:
        return f"{self.prefix}:changes"

    def session(self, session_id: str) -> str:
        if self.hashed:
            return f"{self.prefix}:s:{{{session_id[TAG]}}}:{self.name(session_id)}"
        if self.layout == 2:
            return f"{self.prefix}:s:{{{session_id[TAG]}}}:{session_id}"
        return f"{self.prefix}:s:{{{session_id}}}"

    def client(self, chash: str) -> str:
        if self.layout >= 2:
            return f"{self.prefix}:c:{{{tag_of_hash(chash)}}}:{chash}"
        return f"{self.prefix}:c:{{{chash}}}"

    def active(self, chash: str) -> str:
        if self.layout >= 2:
            return f"{self.prefix}:a:{{{tag_of_hash(chash)}}}:{chash}"
        return f"{self.prefix}:a:{{{chash}}}"

    def same_slot(self, session_id: str, chash: str) -> bool:
        """Whether the session and its client's indexes may be written by one script."""
        return not self.cluster or session_id[TAG] == tag_of_hash(chash)


def choose_layout(  # noqa: PLR0917 - the store's settings, in one place
    client: Any,
    prefix: str,
    requested: int | None,
    cluster: bool,
    errors: ErrorMapper,
    keyring: Keyring,
) -> Keys:
    """The key names of the store at *prefix*: what ``P:layout`` records, checked against
    *requested* (None: what the store uses; a new store gets layout 3).

    A store written by earlier versions (layout 1: no marker and a ``P:all``; layout 2)
    keeps its layout, with a warning that its key names hold session ids; asking for
    layout 3 there is a :class:`ConfigurationError` naming the way out (a new prefix).
    """
    layout_key, all_key = f"{prefix}:layout", f"{prefix}:all"
    with errors.errors("read the key layout"):
        marker = client.get(layout_key)
        if marker is None:
            want = requested or 3
            if client.exists(all_key):
                current = 1
            elif want == 1:
                current = 1  # asked for explicitly: no marker, as earlier versions wrote
            else:
                value = LAYOUT_2 if want == 2 else LAYOUT_3 + keyring.current_id.encode()
                client.set(layout_key, value, nx=True)
                marker = client.get(layout_key)  # another process may have been first
        if marker is not None:
            current = _parse_marker(prefix, marker)
    want = requested or current
    if want != current:
        way_out = (
            "; key layout 3 (ids hashed in key names) needs a new prefix: copy the sessions "
            "with `stuisession export` / `stuisession import --store <url with a new prefix>`"
            if want == 3
            else ""
        )
        raise ConfigurationError(
            f"the store at prefix {prefix!r} uses key layout {current}, not {want}{way_out}"
        )
    if cluster and current == 1:
        raise ConfigurationError(
            f"the store at prefix {prefix!r} holds sessions in key layout 1 (as written by "
            "earlier versions on a single server), which Redis Cluster cannot hold: use a "
            "new prefix"
        )
    if current != 3:
        log.warning(
            "Redis store at prefix %r uses key layout %d: its key names hold session ids in "
            "clear; move to layout 3 by copying it to a new prefix (docs/backends.md)",
            prefix,
            current,
        )
        return Keys(prefix, current, cluster)
    assert marker is not None
    kid = marker[len(LAYOUT_3) :].decode("ascii", "replace")
    if kid not in keyring:
        raise ConfigurationError(
            f"the store at prefix {prefix!r} names its keys with key {kid!r}, which is not "
            "in the keyring: use the keyring the store was created with",
            key_id=kid,
        )
    return Keys(prefix, 3, cluster, keyring.derive(NAME_PURPOSE, kid))


def _parse_marker(prefix: str, marker: bytes) -> int:
    if marker == LAYOUT_2:
        return 2
    if marker.startswith(LAYOUT_3) and len(marker) > len(LAYOUT_3):
        return 3
    raise ConfigurationError(
        f"the store at prefix {prefix!r} has key layout "
        f"{text(marker)!r}, which this version does not know"
    )

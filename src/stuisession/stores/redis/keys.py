"""Key names of a Redis store (layouts 1 and 2, see the package docstring) and small codecs."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import Any

import attrs

from stuisession.errors import ConfigurationError
from stuisession.state.model import SessionInfo, SessionStatus
from stuisession.stores.redis.errors import ErrorMapper

BATCH = 256
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
#: where a layout-2 session id carries its client's slot tag
TAG = slice(8, 11)
LAYOUT_2 = b"2"


def record_token(info: SessionInfo) -> bytes:
    """The compare-and-swap token of a record as kept in the ``ver`` field."""
    if info.cas_token == (0, ""):
        return b""  # written before records had versions: no ``ver`` field
    return f"{info.version}:{info.lineage}".encode()


def client_hash(client_id: str) -> str:
    """The name of *client_id* in key names: SHA-256 hex (any client id is key-safe)."""
    return hashlib.sha256(client_id.encode("utf-8", "surrogatepass")).hexdigest()


def client_tag(client_id: str) -> str:
    """The layout-2 slot tag of *client_id*: three URL-safe characters (18 bits)."""
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
    """The key names of one store: *prefix*, key *layout* (1 or 2), on a *cluster* or not."""

    prefix: str
    layout: int
    cluster: bool

    @property
    def all(self) -> str:
        return f"{self.prefix}:all"

    @property
    def channel(self) -> str:
        return f"{self.prefix}:changes"

    def session(self, session_id: str) -> str:
        if self.layout == 2:
            return f"{self.prefix}:s:{{{session_id[TAG]}}}:{session_id}"
        return f"{self.prefix}:s:{{{session_id}}}"

    def client(self, chash: str) -> str:
        if self.layout == 2:
            return f"{self.prefix}:c:{{{tag_of_hash(chash)}}}:{chash}"
        return f"{self.prefix}:c:{{{chash}}}"

    def active(self, chash: str) -> str:
        if self.layout == 2:
            return f"{self.prefix}:a:{{{tag_of_hash(chash)}}}:{chash}"
        return f"{self.prefix}:a:{{{chash}}}"

    def same_slot(self, session_id: str, chash: str) -> bool:
        """Whether the session and its client's indexes may be written by one script."""
        return not self.cluster or session_id[TAG] == tag_of_hash(chash)


def choose_layout(
    client: Any, prefix: str, requested: int | None, cluster: bool, errors: ErrorMapper
) -> int:
    """The key layout: what ``P:layout`` records, checked against *requested*."""
    layout_key, all_key = f"{prefix}:layout", f"{prefix}:all"
    with errors.errors("read the key layout"):
        marker = client.get(layout_key)
        current = 2 if marker == LAYOUT_2 else 1
        if marker is not None and marker != LAYOUT_2:
            raise ConfigurationError(
                f"the store at prefix {prefix!r} has key layout "
                f"{text(marker)!r}, which this version does not know"
            )
        want = requested or (2 if cluster else current)
        if marker is None and want == 2:
            if client.exists(all_key):
                raise ConfigurationError(
                    f"the store at prefix {prefix!r} holds sessions in key layout 1 "
                    "(as written by earlier versions on a single server); layout 2, which "
                    "Redis Cluster needs, cannot read them: use a new prefix"
                )
            client.set(layout_key, LAYOUT_2, nx=True)
            current = 2
    if want != current:
        raise ConfigurationError(
            f"the store at prefix {prefix!r} uses key layout {current}, not {want}"
        )
    if cluster and current != 2:  # pragma: no cover - guarded by RedisStore
        raise ConfigurationError("key layout 1 cannot work on Redis Cluster")
    return current

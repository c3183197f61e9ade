"""Batched reads of a Redis store: index members, session heads, index pruning."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from stuisession.ids import is_valid_session_id
from stuisession.stores.redis.errors import ErrorMapper
from stuisession.stores.redis.keys import Keys, batches


def index_members(client: Any, errors: ErrorMapper, key: str) -> list[str]:
    """The valid session ids in the index zset *key*."""
    with errors.errors("read an index"):
        members: list[bytes] = client.zrange(key, 0, -1)
    ids = (m.decode("ascii", "replace") for m in members)
    return [sid for sid in ids if is_valid_session_id(sid)]


def heads(
    client: Any, errors: ErrorMapper, keys: Keys, ids: Sequence[str], *, sizes: bool = False
) -> Iterator[tuple[str, bytes | None, int]]:
    """(id, head or None, blob size) for *ids*, read in pipelined batches."""
    for chunk in batches(ids):
        with errors.errors("read sessions"):
            pipe = client.pipeline(transaction=False)
            for sid in chunk:
                key = keys.session(sid)
                pipe.hget(key, "head")
                if sizes:
                    pipe.hstrlen(key, "blob")
            results = pipe.execute()
        step = 2 if sizes else 1
        for i, sid in enumerate(chunk):
            size = int(results[i * step + 1]) if sizes else 0
            yield sid, results[i * step], size


def prune(
    errors: ErrorMapper, script: Any, index_key: str, ids: Iterable[str], cutoff: float
) -> None:
    """Remove *ids* indexed before *cutoff* (seconds) from *index_key* (their session is gone)."""
    members = list(ids)
    if not members:
        return
    with errors.errors("prune an index"):
        for chunk in batches(members):
            script(keys=[index_key], args=[cutoff, *chunk])

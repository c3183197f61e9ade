"""Batched reads of a Redis store: index members, session heads, index pruning."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from stuisession.codec.snapshot import SnapshotCodec
from stuisession.errors import IntegrityError
from stuisession.ids import is_valid_session_id
from stuisession.stores.base import VerifyItem
from stuisession.stores.redis.errors import ErrorMapper
from stuisession.stores.redis.keys import Keys, batches


def index_members(client: Any, errors: ErrorMapper, keys: Keys, key: str) -> list[str]:
    """The well-formed members of the index zset *key*: session ids (layouts 1/2), or
    slot tag + keyed session name (layout 3; see :meth:`Keys.member`)."""
    with errors.errors("read an index"):
        members: list[bytes] = client.zrange(key, 0, -1)
    found = (m.decode("ascii", "replace") for m in members)
    if keys.hashed:
        return [m for m in found if keys.is_member(m)]
    return [sid for sid in found if is_valid_session_id(sid)]


def heads(
    client: Any, errors: ErrorMapper, keys: Keys, members: Sequence[str], *, sizes: bool = False
) -> Iterator[tuple[str, bytes | None, int]]:
    """(member, head or None, blob size) for index *members*, read in pipelined batches."""
    for chunk in batches(members):
        with errors.errors("read sessions"):
            pipe = client.pipeline(transaction=False)
            for member in chunk:
                key = keys.of_member(member)
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


def verify_items(
    client: Any, errors: ErrorMapper, keys: Keys, codec: SnapshotCodec
) -> list[VerifyItem]:
    """One item per member of the global index of a layout-3 store, readable or not.

    The id comes from the member's record; a record that can not be read (or names
    another session) is still listed, under its index member and with its key as
    ``path``, so that verification reports it instead of skipping it.
    """
    items: list[VerifyItem] = []
    members = index_members(client, errors, keys, keys.all)
    for member, head, _ in heads(client, errors, keys, members):
        if head is None:
            continue  # gone meanwhile
        sid = member
        with contextlib.suppress(IntegrityError):
            found = codec.read_info(head).session_id
            if keys.matches(member, found):
                sid = found
        items.append(VerifyItem(sid, path=keys.of_member(member)))
    return items

"""Stores for the guarantee tests: several "bridges" (store instances) on one backend.

``open_store()`` gives another instance on the same data, as a second bridge
process would have: the same instance for memory, another ``FileStore`` on
the same directory, another ``RedisStore`` on the same server and prefix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stuisession import FileStore, MemoryStore
from stuisession.keys import Keyring
from stuisession.stores.base import SessionStore
from stuisession.stores.redis import RedisStore

KINDS = ["memory", "file", "redis"]

OpenStore = Callable[[], SessionStore]


@pytest.fixture(name="open_store", params=KINDS)
def open_store_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenStore]:
    """A factory of store instances that all see the same sessions."""
    kind: str = request.param
    keyring = Keyring.generate()
    opened: list[SessionStore] = []
    memory = MemoryStore() if kind == "memory" else None
    url = prefix = ""
    if kind == "redis":
        url = request.getfixturevalue("redis_url")
        prefix = request.getfixturevalue("redis_prefix")

    def make() -> SessionStore:
        store: SessionStore
        if memory is not None:
            return memory
        if kind == "file":
            store = FileStore(tmp_path / "store", keyring=keyring, fsync=False)
        else:
            store = RedisStore(url, prefix=prefix, keyring=keyring)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()

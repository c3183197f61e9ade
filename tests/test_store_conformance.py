"""The store conformance suite (:mod:`stuisession.testing.stores`) run on this package's
backends: memory, file, and Redis (Lua and WATCH compare-and-swap)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest

from stuisession.keys import Keyring
from stuisession.stores import FileStore, MemoryStore, SessionStore
from stuisession.stores.redis import RedisStore
from stuisession.testing.stores import StoreConformance


# -- the backends of this package ---------------------------------------------------------
class TestMemoryStore(StoreConformance):
    @pytest.fixture
    def make_store(self) -> Iterator[SessionStore]:
        with MemoryStore() as s:
            yield s

    def corrupt(self, store: Any, session_id: str, blob: bytes) -> None:
        store.corrupt(session_id, blob)


class TestFileStore(StoreConformance):
    @pytest.fixture
    def make_store(self, tmp_path: Path) -> Iterator[SessionStore]:
        with FileStore(tmp_path / "store", keyring=Keyring.generate()) as s:
            yield s

    def corrupt(self, store: Any, session_id: str, blob: bytes) -> None:
        path = Path(store._paths(session_id).current)
        assert path.exists()
        path.write_bytes(blob)


class TestRedisStore(StoreConformance):
    cas: Literal["lua", "watch"] = "lua"

    @pytest.fixture
    def make_store(self, redis_url: str, redis_prefix: str) -> Iterator[SessionStore]:
        store = RedisStore(redis_url, prefix=redis_prefix, keyring=Keyring.generate(), cas=self.cas)
        try:
            yield store
        finally:
            keys = list(store.client.scan_iter(match=f"{redis_prefix}:*", count=1000))
            if keys:
                store.client.delete(*keys)
            store.close()

    def corrupt(self, store: Any, session_id: str, blob: bytes) -> None:
        key = store.session_key(session_id)
        assert store.client.exists(key)
        # the head copy too: it is what listings read
        store.client.hset(key, mapping={"blob": blob, "head": blob})


class TestRedisStoreWatch(TestRedisStore):
    cas: Literal["lua", "watch"] = "watch"

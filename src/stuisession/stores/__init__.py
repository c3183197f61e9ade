"""Storage backends."""

from typing import TYPE_CHECKING

from stuisession.stores.base import SessionStore, StoreStatistics
from stuisession.stores.file.store import FileStore
from stuisession.stores.memory import MemoryStore

if TYPE_CHECKING:
    from stuisession.stores.redis import RedisStore

__all__ = ["FileStore", "MemoryStore", "RedisStore", "SessionStore", "StoreStatistics"]


def __getattr__(name: str) -> object:
    # RedisStore is imported on first use, so that the redis package stays optional
    if name == "RedisStore":
        from stuisession.stores.redis import RedisStore

        return RedisStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

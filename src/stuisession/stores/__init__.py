"""Storage backends."""

from typing import TYPE_CHECKING

from .base import SessionStore, StoreStatistics
from .file import FileStore
from .memory import MemoryStore

if TYPE_CHECKING:
    from .redis import RedisStore

__all__ = ["FileStore", "MemoryStore", "RedisStore", "SessionStore", "StoreStatistics"]


def __getattr__(name: str) -> object:
    # RedisStore is imported on first use, so that the redis package stays optional
    if name == "RedisStore":
        from .redis import RedisStore

        return RedisStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Storage backends."""

from .base import SessionStore, StoreStatistics
from .memory import MemoryStore

__all__ = ["MemoryStore", "SessionStore", "StoreStatistics"]

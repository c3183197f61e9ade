"""Clocks: every wall-time reading of the library goes through a :class:`Clock`.

So tests can move time, library code asks a clock (:class:`SystemClock` by default,
:class:`ManualClock` in tests) instead of calling :func:`time.time`. Durations, timeouts
and poll waits use :func:`time.monotonic` directly: they measure elapsed time, must never
jump with the wall clock, and are not session time. Known exceptions still calling
:func:`time.time` (to be routed by their owners): the file store's stale-temp age and the
Redis client index, which compare against file/server times, and the CLI.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    """Anything with a ``now()`` returning Unix seconds (float)."""

    def now(self) -> float:
        """The current time in Unix seconds."""
        ...


class SystemClock:
    """Wall-clock time."""

    def now(self) -> float:
        """``time.time()``."""
        return time.time()


class ManualClock:
    """A clock that only moves when told to: for tests and simulations."""

    def __init__(self, start: float = 1_767_225_600.0) -> None:  # 2026-01-01T00:00:00Z
        self._now = float(start)
        self._lock = threading.Lock()

    def now(self) -> float:
        """The clock's current time (Unix seconds)."""
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock by *seconds* (may be negative: a clock jumping backwards)."""
        with self._lock:
            self._now += seconds

    def set(self, when: float) -> None:
        """Jump to *when* (Unix seconds), forwards or backwards."""
        with self._lock:
            self._now = float(when)


def isoformat(ts: float) -> str:
    """Unix seconds -> ISO-8601 UTC with ``Z`` and whole seconds, as upstream examples."""
    return datetime.fromtimestamp(int(ts), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


__all__ = ["Clock", "ManualClock", "SystemClock", "isoformat"]

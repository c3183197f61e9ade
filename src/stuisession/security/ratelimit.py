"""Per-key token-bucket rate limiting with bounded memory.

Each key (typically a client id) has a bucket holding up to ``burst`` tokens,
refilled at ``rate`` tokens per second; a request takes one token (or
``cost``). A refused request is told when to retry.

Time: by default the limiter reads :func:`time.monotonic`, which never jumps.
With an injected :class:`~stuisession.clock.Clock` (wall time, or a
:class:`~stuisession.clock.ManualClock` in tests) the limiter only ever sees
time move forwards: a clock stepping backwards grants no tokens until it
catches up with the latest time seen, so an oscillating clock can not mint
tokens. That is why :class:`~stuisession.service.SessionService` gives the
limiter its own monotonic time whenever the service runs on the system clock:
a wall-clock spike followed by its correction would otherwise pause refills
for the length of the spike.

Memory: at most ``max_clients`` buckets are kept. When a new key arrives at the
bound, buckets that have refilled to full are dropped first (dropping a full
bucket changes nothing: a new one starts full); if none are, the least recently
used bucket is dropped, which can at worst give that key one extra burst.

Client ids are chosen by clients, so a per-client-id limit is fairness, not
flood protection: pair it with a limit keyed on the transport peer and/or a
global key (e.g. a second limiter used with the key ``"*"``).
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable

from stuisession.clock import Clock
from stuisession.errors import ConfigurationError, RateLimited

__all__ = ["TokenBucketLimiter"]

#: ``retry_after`` is rounded up to this many seconds
RETRY_RESOLUTION = 0.001
#: how many least-recently-used buckets an insertion inspects for fullness
_EVICTION_SCAN = 8


class _MonotonicClock:
    def now(self) -> float:
        return time.monotonic()


class TokenBucketLimiter:
    """Token buckets by key: ``rate`` tokens per second, at most ``burst`` stored.

    Thread-safe. ``check(key)`` raises :class:`RateLimited`; ``try_acquire(key)``
    returns how long to wait instead.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Clock | None = None,
        max_clients: int = 100_000,
    ) -> None:
        if not (isinstance(rate, int | float) and math.isfinite(rate) and rate > 0):
            raise ConfigurationError("rate must be a positive finite number")
        if not (isinstance(burst, int) and burst >= 1):
            raise ConfigurationError("burst must be an integer >= 1")
        if not (isinstance(max_clients, int) and max_clients >= 1):
            raise ConfigurationError("max_clients must be an integer >= 1")
        self.rate = float(rate)
        self.burst = burst
        self.max_clients = max_clients
        self._clock: Clock = clock or _MonotonicClock()
        self._lock = threading.Lock()
        # key -> [tokens, time of last refill]; ordered from least to most recently used
        self._buckets: OrderedDict[Hashable, list[float]] = OrderedDict()
        self._high_water = -math.inf

    def _now(self) -> float:
        # never let time go backwards (caller holds the lock)
        now = self._clock.now()
        self._high_water = max(self._high_water, now)
        return self._high_water

    def _refilled(self, bucket: list[float], now: float) -> float:
        elapsed = now - bucket[1]
        if elapsed > 0:
            bucket[0] = min(float(self.burst), bucket[0] + elapsed * self.rate)
            bucket[1] = now
        return bucket[0]

    def _make_room(self, now: float) -> None:
        buckets = self._buckets
        if len(buckets) < self.max_clients:
            return
        for key in list(itertools.islice(buckets, _EVICTION_SCAN)):
            if self._refilled(buckets[key], now) >= self.burst:
                del buckets[key]
        while len(buckets) >= self.max_clients:
            buckets.popitem(last=False)

    def try_acquire(self, key: Hashable, cost: float = 1.0) -> float:
        """Take *cost* tokens from *key*'s bucket if it has them and return 0.0;
        otherwise take nothing and return the seconds to wait (> 0, rounded up
        to 1 ms)."""
        if not (math.isfinite(cost) and 0 < cost <= self.burst):
            raise ValueError("cost must be > 0 and at most burst")
        with self._lock:
            now = self._now()
            bucket = self._buckets.get(key)
            if bucket is None:
                self._make_room(now)
                bucket = self._buckets[key] = [float(self.burst), now]
            else:
                self._buckets.move_to_end(key)
            tokens = self._refilled(bucket, now)
            # a few ulps of the timestamps' worth of tolerance: a client that
            # waited exactly retry_after must not be refused for float rounding
            if tokens + 4 * math.ulp(now) * self.rate >= cost:
                bucket[0] = max(0.0, tokens - cost)
                return 0.0
            wait = (cost - tokens) / self.rate
        # round up to whole milliseconds, ignoring float noise below a microsecond (time
        # stamps near 1.7e9 s carry ~0.2 us of rounding error)
        return max(RETRY_RESOLUTION, math.ceil(wait * 1000 - 1e-3) / 1000)

    def check(self, key: Hashable, cost: float = 1.0) -> None:
        """Take *cost* tokens from *key*'s bucket or raise
        ``RateLimited("Rate limit exceeded", retry_after=<seconds>)``."""
        wait = self.try_acquire(key, cost)
        if wait > 0:
            raise RateLimited("Rate limit exceeded", retry_after=wait)

    def prune(self) -> int:
        """Drop every bucket that has refilled to full; return how many were dropped.

        O(number of buckets): call it from a periodic sweep, not per request.
        """
        with self._lock:
            now = self._now()
            full = [k for k, b in self._buckets.items() if self._refilled(b, now) >= self.burst]
            for key in full:
                del self._buckets[key]
            return len(full)

    def reset(self, key: Hashable) -> None:
        """Forget *key*'s bucket (it starts full on its next request)."""
        with self._lock:
            self._buckets.pop(key, None)

    def __len__(self) -> int:
        """The number of buckets currently held."""
        with self._lock:
            return len(self._buckets)

    def __repr__(self) -> str:
        return (
            f"TokenBucketLimiter(rate={self.rate}, burst={self.burst}, "
            f"max_clients={self.max_clients}, buckets={len(self._buckets)})"
        )

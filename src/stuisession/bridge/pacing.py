"""Pacing of large requests: two token buckets in front of the bridge's large-request lane.

Issue 17 (``tests/adversarial``, ``cpu_valid_json`` and ``cpu_valid_json_medium``): a
few connections sending large messages that are costly to parse, or cheap to refuse
but large, take the process's GIL and the machine's cores (kernel copies of the
bytes, the parse itself) from every small request. Running one large request at a
time (``KeyedExecutor.max_heavy``) bounds the *concurrency*; this bounds the *rate*:

- **bytes**: large requests start at most ``rate`` bytes per second (what the
  kernel, libzmq and the scan must move and read), with a burst of
  ``rate * BURST_SECONDS`` bytes;
- **time**: large requests are being handled at most ``share`` of wall time
  (while one runs, its parse may hold the GIL, or a core, at any moment), with a
  burst of ``share * BURST_SECONDS`` seconds. Charged CPU time instead, which
  leaves out waiting, the sub-1 MiB attack's p99 ratio was 2.5x instead of 1.8x
  (medians of round ratios, measured before the lane ran at nice 19).

A large request starts only while both buckets are positive and is charged
(its bytes when it starts, its duration when it ends), so a request
larger than a burst still runs, and its debt delays the next one. A client
whose large request waits gets its reply later; nothing is refused by pacing
(the queues in front of it are bounded by ``Policy.max_queued_bytes`` and
``max_pending``). Small requests never wait for either bucket. This is the
classic token bucket (as in RFC 2697's committed burst) applied twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["BURST_SECONDS", "LARGE_BYTES", "Pacer"]

#: a request larger than this (bytes) is large: paced, and one at a time per process
LARGE_BYTES = 8 * 1024
#: seconds of each rate a bucket holds when full
BURST_SECONDS = 0.5


class Pacer:
    """Token buckets for large requests (not thread-safe: the executor's lock guards it).

    :param rate: bytes per second of large requests that may start (None: unpaced).
    :param share: fraction (0, 1] of wall time large requests may run (None: unbounded).
    :param clock: seconds, monotonic (injectable for tests).
    """

    def __init__(
        self,
        rate: float | None,
        share: float | None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate is not None and rate <= 0:
            raise ValueError("rate must be positive or None")
        if share is not None and not 0 < share <= 1:
            raise ValueError("share must be in (0, 1] or None")
        self.rate = rate
        self.share = share
        self._clock = clock
        self._bytes = 0.0 if rate is None else rate * BURST_SECONDS
        self._time = 0.0 if share is None else share * BURST_SECONDS
        self._at = clock()

    def _refill(self, busy: float = 0.0) -> None:
        """Add what the rates gave since the last call, less *busy* seconds
        (taken before the cap, so a full bucket still counts a job's own time)."""
        now = self._clock()
        elapsed = max(0.0, now - self._at)
        self._at = now
        if self.rate is not None:
            self._bytes = min(self.rate * BURST_SECONDS, self._bytes + elapsed * self.rate)
        if self.share is not None:
            self._time = min(self.share * BURST_SECONDS, self._time + elapsed * self.share - busy)

    def wait_time(self) -> float:
        """Seconds until a large request may start (0.0: now)."""
        self._refill()
        wait = 0.0
        if self.rate is not None and self._bytes <= 0:
            wait = max(wait, -self._bytes / self.rate)
        if self.share is not None and self._time <= 0:
            wait = max(wait, -self._time / self.share)
        # float noise of the refill must not hold back a request that waited exactly
        return wait if wait > 1e-9 else 0.0

    def start(self, size: int) -> float:
        """Charge a large request of *size* bytes that starts now; its start time,
        for :meth:`finish`."""
        self._refill()
        if self.rate is not None:
            self._bytes -= size
        return self._at

    def finish(self, started: float) -> None:
        """Charge the time since *started* (from :meth:`start`) that a large request took."""
        self._refill(busy=max(0.0, self._clock() - started))

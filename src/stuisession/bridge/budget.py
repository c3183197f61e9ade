"""Queued-bytes accounting of the bridge: per connection and in total.

What the bridge holds for a connection (routing identity) is charged here:
the body of each request accepted but not yet handled, and each reply handed
to ZeroMQ but not yet written to the peer's socket (its
:class:`zmq.MessageTracker` is not ``done``; replies are sent zero-copy, so
until then the bytes are held in this process). Two bounds apply
(``Policy.max_queued_bytes_per_connection`` and ``Policy.max_queued_bytes``):

- a connection whose held bytes would go over its bound is **dropped**: the
  reply (or request) that would cross it is discarded, its queued requests
  are skipped, and its later requests are refused (``Busy``, reason
  ``connection_dropped``) until it has sent nothing for ``idle_timeout``
  seconds;
- while the total held would go over its bound, new requests are refused
  with ``Busy`` (reason ``queued_bytes``), and a reply that would cross it is
  replaced by a small ``Busy`` error (reason ``reply_discarded``: the request
  was handled; a retry with the same id gets the dedup cache's reply).

So the bytes held never exceed the bounds, apart from the small error
replies themselves (at most ``socket_hwm`` per peer). Replies already in
ZeroMQ when a connection is dropped stay charged until the peer reads them
or goes away: libzmq offers no way to cut one ROUTER peer.

Thread-safe: the serving thread admits and charges, workers release.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from stuisession.errors import Busy

__all__ = ["QueueBudget", "Tracker", "send_tracked"]

#: the shortest interval between scans of every connection's unsent replies (seconds)
REFRESH_INTERVAL = 0.02


class Tracker(Protocol):
    """What :meth:`QueueBudget.sent` needs of a :class:`zmq.MessageTracker`."""

    @property
    def done(self) -> bool: ...


class QueueBudget:
    """Bytes held per connection and in total, against two bounds.

    :param per_connection: bytes one connection may have held (requests not
        yet handled plus replies not yet written out).
    :param total: bytes all connections together may have held.
    :param idle_timeout: seconds without a request after which a dropped
        connection is accepted again.
    :param clock: monotonic seconds (tests pass a fake).
    """

    def __init__(
        self,
        per_connection: int,
        total: int,
        idle_timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if per_connection < 1 or total < 1:
            raise ValueError("queued-byte bounds must be positive")
        self.per_connection = per_connection
        self.total = total
        self.idle_timeout = idle_timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}
        self._used = 0
        #: unsent replies per connection, in send order (ZeroMQ writes them in order)
        self._unsent: dict[str, collections.deque[tuple[Tracker, int]]] = {}
        #: dropped connections and when they last tried to send
        self._dropped: dict[str, float] = {}
        self._next_refresh = 0.0
        #: connections dropped, requests refused, replies discarded (for statistics)
        self.drops = 0
        self.refused = 0
        self.discarded = 0

    # -- requests (serving thread, then a worker) -----------------------------------------
    def admit(self, ident: str, size: int) -> None:
        """Charge a request of *size* bytes to *ident*, or refuse it.

        Raises :class:`Busy` with ``reason`` ``connection_dropped`` (the
        connection is, or is now, dropped) or ``queued_bytes`` (the total
        is at its bound). Call :meth:`request_done` once it is handled.
        """
        with self._lock:
            now = self._clock()
            if self._is_dropped(ident, now):
                self._dropped[ident] = now
                self.refused += 1
                raise _dropped_error(self.per_connection, self.idle_timeout)
            self._refresh_one(ident)
            if self._held.get(ident, 0) + size > self.per_connection:
                self._drop(ident, now)
                self.refused += 1
                raise _dropped_error(self.per_connection, self.idle_timeout)
            if self._used + size > self.total:
                self._refresh_all(now)
            if self._used + size > self.total:
                self.refused += 1
                raise Busy(
                    "The bridge holds too many unsent bytes; retry shortly",
                    reason="queued_bytes",
                    limit=self.total,
                )
            self._charge(ident, size)

    def request_done(self, ident: str, size: int) -> None:
        """Release a request charged by :meth:`admit` (handled or skipped)."""
        with self._lock:
            self._charge(ident, -size)

    def dropped(self, ident: str) -> bool:
        """True while *ident* is dropped (its queued requests are skipped)."""
        with self._lock:
            return self._is_dropped(ident, self._clock())

    # -- replies (serving thread) ---------------------------------------------------------
    def reply(self, ident: str, size: int) -> Busy | None:
        """Reserve *size* bytes for a reply to *ident*; None if it may be sent.

        Otherwise the error to send instead (a small ``Busy``): the connection
        is dropped (``connection_dropped``) or the total is full
        (``reply_discarded``). A reserved reply must be passed to :meth:`sent`.
        """
        with self._lock:
            now = self._clock()
            if self._is_dropped(ident, now):
                self.discarded += 1
                return _dropped_error(self.per_connection, self.idle_timeout)
            self._refresh_one(ident)
            if self._held.get(ident, 0) + size > self.per_connection:
                self._drop(ident, now)
                self.discarded += 1
                return _dropped_error(self.per_connection, self.idle_timeout)
            if self._used + size > self.total:
                self._refresh_all(now)
            if self._used + size > self.total:
                self.discarded += 1
                return Busy(
                    "The reply was discarded: the bridge holds too many unsent bytes. "
                    "The request was handled; retry it with the same id",
                    reason="reply_discarded",
                    limit=self.total,
                )
            self._charge(ident, size)
            return None

    def sent(self, ident: str, size: int, tracker: Tracker | None) -> None:
        """The reserved reply went to ZeroMQ; charged until *tracker* is done.

        With *tracker* None (the send failed) the reservation is released.
        """
        with self._lock:
            if tracker is None or tracker.done:
                self._charge(ident, -size)
            else:
                self._unsent.setdefault(ident, collections.deque()).append((tracker, size))

    # -- upkeep (serving thread) ----------------------------------------------------------
    def refresh(self) -> None:
        """Release the replies ZeroMQ has written out (at most every few ms)."""
        with self._lock:
            self._refresh_all(self._clock())

    def sweep(self) -> None:
        """Forget dropped connections that have been quiet for ``idle_timeout``."""
        with self._lock:
            now = self._clock()
            for ident in [i for i, t in self._dropped.items() if now - t >= self.idle_timeout]:
                del self._dropped[ident]

    @property
    def used(self) -> int:
        """Bytes held now, all connections together."""
        with self._lock:
            return self._used

    def held(self, ident: str) -> int:
        """Bytes held now for *ident*."""
        with self._lock:
            return self._held.get(ident, 0)

    def statistics(self) -> dict[str, Any]:
        """A small summary for ``get_session_statistics`` (bounded size)."""
        with self._lock:
            return {
                "queued_bytes": self._used,
                "max_queued_bytes": self.total,
                "max_queued_bytes_per_connection": self.per_connection,
                "dropped_connections": len(self._dropped),
                "connections_dropped": self.drops,
                "requests_refused": self.refused,
                "replies_discarded": self.discarded,
            }

    # -- internals (lock held) ------------------------------------------------------------
    def _is_dropped(self, ident: str, now: float) -> bool:
        last = self._dropped.get(ident)
        if last is None:
            return False
        if now - last >= self.idle_timeout:
            del self._dropped[ident]
            return False
        return True

    def _drop(self, ident: str, now: float) -> None:
        self._dropped[ident] = now
        self.drops += 1

    def _charge(self, ident: str, delta: int) -> None:
        held = self._held.get(ident, 0) + delta
        if held > 0:
            self._held[ident] = held
        else:
            self._held.pop(ident, None)
        self._used += delta

    def _refresh_one(self, ident: str) -> None:
        unsent = self._unsent.get(ident)
        if unsent is None:
            return
        while unsent and unsent[0][0].done:
            self._charge(ident, -unsent.popleft()[1])
        if not unsent:
            del self._unsent[ident]

    def _refresh_all(self, now: float) -> None:
        if now < self._next_refresh:
            return
        self._next_refresh = now + REFRESH_INTERVAL
        for ident in list(self._unsent):
            self._refresh_one(ident)


def _dropped_error(limit: int, idle_timeout: float) -> Busy:
    return Busy(
        "This connection was dropped: it left too many bytes unread. "
        f"Requests are refused until it has been quiet for {idle_timeout:g} s",
        reason="connection_dropped",
        limit=limit,
    )


def send_tracked(sock: Any, zmq: Any, frames: list[bytes]) -> Tracker:
    """Send *frames* without blocking; the last (the body) zero-copy and tracked.

    Only the body is tracked: tracking every frame costs several times more.
    Raises :class:`zmq.ZMQError` as ``send_multipart`` does.
    """
    for frame in frames[:-1]:
        sock.send(frame, zmq.SNDMORE | zmq.NOBLOCK)
    tracker: Tracker = sock.send(frames[-1], zmq.NOBLOCK, copy=False, track=True)
    return tracker

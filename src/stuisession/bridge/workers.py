"""A bounded worker pool that keeps the order of each key's jobs.

Jobs with the same key (one session) run one after another in arrival order,
as nREPL applies the messages of one session; jobs with different keys run in
parallel on up to ``workers`` threads. At most ``max_pending`` jobs wait or
run at once; :meth:`KeyedExecutor.submit` refuses more with
:class:`~stuisession.errors.Busy` (back-pressure instead of unbounded queues).

Heavy jobs (the bridge marks requests over
:data:`~stuisession.bridge.pacing.LARGE_BYTES`) run at most ``max_heavy`` at a
time (default one per process), and with a :class:`~stuisession.bridge.pacing.Pacer`
start only as fast as its byte rate and time share allow: a few connections
sending large messages that are costly to parse, and hold the GIL while it is
done, can then neither occupy every worker nor take most of the process's time
from small requests (issue 17, ``tests/adversarial``). A key whose next job is
heavy waits its turn; other keys run meanwhile, so each key's order is kept.
"""

from __future__ import annotations

import collections
import sys
import threading
import time
from collections.abc import Callable, Hashable

from stuisession.bridge.pacing import Pacer
from stuisession.errors import Busy

Job = Callable[[], None]

#: the interpreter's switch interval in a ``stuisession serve`` process (seconds;
#: CPython's default is 0.005)
SWITCH_INTERVAL = 0.0005


def favour_short_requests() -> None:
    """Let a thread waiting for the GIL have it within about :data:`SWITCH_INTERVAL` s.

    A thread checking a large message (in chunks: ``stuisession._jsonscan``) would
    otherwise keep the GIL for CPython's default 5 ms at every turn, and a small
    request, which needs the GIL a dozen times on its way through the bridge, would
    wait that long each time (issue 17, ``tests/adversarial``). Process-wide: called
    by ``stuisession serve`` (and its worker processes), never by the library.
    """
    sys.setswitchinterval(SWITCH_INTERVAL)


class KeyedExecutor:
    """Thread pool with per-key FIFO ordering and a bound on queued work."""

    def __init__(
        self,
        workers: int = 8,
        max_pending: int = 1024,
        max_heavy: int | None = None,
        pacer: Pacer | None = None,
    ) -> None:
        if workers < 1 or max_pending < 1:
            raise ValueError("workers and max_pending must be positive")
        self.workers = workers
        self.max_pending = max_pending
        #: heavy jobs running at once (default 1: measured best for small requests' p99
        #: under issue 17's attack on 2 cores; ``tests/adversarial``)
        self.max_heavy = 1 if max_heavy is None else max_heavy
        self._heavy_running = 0
        #: paces heavy jobs (None: only ``max_heavy`` bounds them)
        self.pacer = pacer
        self._lock = threading.Condition()
        self._ready: collections.deque[Hashable] = (
            collections.deque()
        )  # keys with work, not running
        #: per key: (job, heavy, size in bytes charged to the pacer)
        self._queues: dict[Hashable, collections.deque[tuple[Job, bool, int]]] = {}
        self._running: set[Hashable] = set()
        self._pending = 0
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._run, name=f"stuisession-worker-{i}", daemon=True)
            for i in range(workers)
        ]
        for t in self._threads:
            t.start()

    @property
    def pending(self) -> int:
        """Jobs queued or running."""
        with self._lock:
            return self._pending

    def submit(self, key: Hashable, job: Job, *, heavy: bool = False, size: int = 0) -> None:
        """Queue *job* behind the earlier jobs of *key*; :class:`Busy` when saturated.

        A *heavy* job starts only while fewer than ``max_heavy`` heavy jobs run and
        the pacer (if any) allows; *size* (bytes) is what it is charged.
        """
        with self._lock:
            if self._stopping:
                raise Busy("The server is shutting down")
            if self._pending >= self.max_pending:
                raise Busy("The server is busy; retry shortly", pending=self._pending)
            self._pending += 1
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = collections.deque()
                if key not in self._running:
                    self._ready.append(key)
            queue.append((job, heavy, size))
            self._lock.notify()

    def _run(self) -> None:
        while True:
            with self._lock:
                while (key := self._next_key()) is None and not self._stopping:
                    # a heavy job held back by the pacer only: wake when it may start
                    self._lock.wait(self._paced_wait())
                if key is None:
                    if self._ready:  # stopping, but heavy work is still to do
                        self._lock.wait(0.05)
                        continue
                    return  # stopping and nothing left to do
                queue = self._queues[key]
                job, heavy, size = queue.popleft()
                if not queue:
                    del self._queues[key]
                self._running.add(key)
                self._heavy_running += heavy
                paced_from = self.pacer.start(size) if heavy and self.pacer is not None else None
            try:
                job()
            except Exception:  # pragma: no cover - jobs handle their own errors
                import logging

                logging.getLogger("stuisession.dispatch").exception("a job failed")
            finally:
                with self._lock:
                    self._heavy_running -= heavy
                    if paced_from is not None and self.pacer is not None:
                        self.pacer.finish(paced_from)
                    self._running.discard(key)
                    self._pending -= 1
                    if key in self._queues:
                        self._ready.append(key)
                    self._lock.notify_all()

    def _next_key(self) -> Hashable | None:
        """Take the first ready key whose next job may start now (lock held)."""
        if not self._ready:
            return None
        if self._heavy_running < self.max_heavy and (
            self.pacer is None or self.pacer.wait_time() == 0.0
        ):
            return self._ready.popleft()
        for i, key in enumerate(self._ready):
            if not self._queues[key][0][1]:
                del self._ready[i]
                return key
        return None

    def _paced_wait(self) -> float | None:
        """Seconds until the pacer lets a waiting heavy job start (lock held); None:
        nothing waits for the pacer (a finishing job notifies)."""
        if self.pacer is None or self._heavy_running >= self.max_heavy or not self._ready:
            return None
        wait = self.pacer.wait_time()
        return wait if wait > 0 else None

    @property
    def heavy_waiting(self) -> int:
        """Heavy jobs queued and not yet started."""
        with self._lock:
            return sum(heavy for q in self._queues.values() for _, heavy, _ in q)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until no job is queued or running; True if that happened in time."""
        with self._lock:
            return self._lock.wait_for(lambda: self._pending == 0, timeout)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Refuse new jobs, finish the queued ones, stop the threads.

        Waits at most *timeout* seconds in all (not per thread); threads still
        busy then are left to finish on their own (they are daemons).
        """
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

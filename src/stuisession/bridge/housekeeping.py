"""The bridge's periodic work and what it reports: dropping idle connections, the
session expiry sweep on the worker pool, and the bridge's part of
``get_session_statistics``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from stuisession.bridge.budget import QueueBudget
from stuisession.bridge.connections import ConnectionTracker
from stuisession.bridge.notify import Notifier
from stuisession.bridge.workers import KeyedExecutor
from stuisession.errors import Busy
from stuisession.security.identity import fingerprint

__all__ = ["ExpirySweeper", "bridge_statistics", "sweep_connections"]


def sweep_connections(
    budget: QueueBudget, tracker: ConnectionTracker, now: float, log: logging.Logger
) -> None:
    """Forget connections idle at *now* (wall seconds) and the budget's dropped peers."""
    budget.sweep()  # [budget hook]
    for conn in tracker.sweep(now):
        log.info(
            "connection %s idle for %.0f s: disconnected, %d session(s) detached",
            fingerprint(conn.identity),
            now - conn.last_seen,
            len(conn.sessions),
        )


class ExpirySweeper:
    """Runs *cleanup* (the handler's ``cleanup_expired``) on the worker pool, one at a time.

    :param cleanup: removes expired sessions and returns how many (any value is logged).
    :param log: where failures (ERROR) and timings (DEBUG) go.
    """

    def __init__(self, cleanup: Callable[[], Any], log: logging.Logger) -> None:
        self.cleanup = cleanup
        self.log = log
        self._running = threading.Event()

    def start(self, executor: KeyedExecutor | None) -> None:
        """Queue a sweep unless one is still running (or the pool is full: next interval)."""
        if self._running.is_set() or executor is None:
            return  # the previous sweep is still running
        self._running.set()
        try:
            executor.submit(("sweep", ""), self.run)
        except Busy:
            self._running.clear()

    def run(self) -> None:
        """One sweep (worker thread); a failure is logged and retried at the next interval."""
        started = time.perf_counter()
        try:
            removed = self.cleanup()
        except Exception:
            self.log.exception("expiry sweep failed; retrying at the next interval")
            return
        finally:
            self._running.clear()
        self.log.debug(
            "expiry sweep removed %s sessions in %.1f ms",
            removed,
            (time.perf_counter() - started) * 1000.0,
        )


def bridge_statistics(
    *,
    now: float,
    tracker: ConnectionTracker,
    pending: int,
    requests_served: int,
    started_at: float,
    upstream: bool,
    budget: QueueBudget,
    notifier: Notifier | None,
) -> dict[str, Any]:
    """What the bridge adds to ``get_session_statistics`` (*now*, *started_at*: wall seconds).

    ``connections`` (per-connection details, client ids included) is shown to
    operators only; routing identities appear only as a fingerprint.
    """
    connections = [
        {**c, "identity": fingerprint(str(c.get("identity", "")))} for c in tracker.snapshot(now)
    ]
    return {
        "connected_clients": len(tracker),
        "attached_sessions": tracker.attached_sessions(),
        "connections": connections,
        "pending_requests": pending,
        "requests_served": requests_served,
        "uptime": int(now - started_at),
        "upstream": upstream,
        "queues": budget.statistics(),  # [budget hook]
        **({} if notifier is None else {"notifications": notifier.statistics()}),
    }

"""Refusals audited as summaries, so an attacker can not turn refusals into disk I/O.

Every denied or rate-limited request used to be one fsync'd audit line. The
:class:`RefusalAggregator` instead counts refusals per ``(client, event,
reason)`` and writes one line per key per interval (``Policy.audit_interval``,
default 60 s), with ``reason`` ending in ``" x<count>"``. Lines are written when
the interval ends (a timer) or on :meth:`RefusalAggregator.close`.

Nothing secret reaches the log: a rate-limit key naming a session
(``s:<session id>``) is replaced by the audit log's keyed hash of the id
(``s#<ref>``), and the audit log's canonical encoding escapes every control
character (C0 and C1) and all non-ASCII text. At most ``max_keys`` distinct
keys are counted per interval; further refusals are counted under the client
``"*"`` so the summary itself stays bounded.
"""

from __future__ import annotations

import atexit
import logging
import threading
import weakref
from typing import Any

from stuisession.ids import is_valid_session_id
from stuisession.security.audit import AuditLog

__all__ = ["RefusalAggregator"]

log = logging.getLogger("stuisession.audit")

_Key = tuple[str | None, str, str | None]


def _close_at_exit(ref: weakref.ref[RefusalAggregator]) -> None:
    agg = ref()
    if agg is not None:
        agg.close()


class RefusalAggregator:
    """Counts refusals and writes one audit line per ``(client, event, reason)`` per interval.

    Thread-safe. :param interval: seconds per summary (> 0).
    """

    def __init__(self, audit: AuditLog, interval: float = 60.0, *, max_keys: int = 10_000) -> None:
        self.audit = audit
        self.interval = interval
        self.max_keys = max_keys
        self._counts: dict[_Key, int] = {}
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._closed = False
        atexit.register(_close_at_exit, weakref.ref(self))

    def client_field(self, client_id: str | None) -> str | None:
        """*client_id* as it may appear in the log (a session id is replaced by its keyed hash)."""
        if client_id is None:
            return None
        if client_id.startswith("s:") and is_valid_session_id(client_id[2:]):
            return "s#" + self.audit.session_ref(client_id[2:])
        if is_valid_session_id(client_id):
            return "s#" + self.audit.session_ref(client_id)
        return client_id[:256]

    def add(self, event: str, client_id: str | None, reason: str | None) -> None:
        """Count one refusal."""
        client = self.client_field(client_id)
        reason = None if reason is None else reason[:120]
        with self._lock:
            key: _Key = (client, event, reason)
            if key not in self._counts and len(self._counts) >= self.max_keys:
                key = ("*", event, "other keys")
            self._counts[key] = self._counts.get(key, 0) + 1
            if self._timer is None and not self._closed:
                self._timer = threading.Timer(self.interval, self._tick)
                self._timer.daemon = True
                self._timer.start()

    def _tick(self) -> None:
        with self._lock:
            self._timer = None
        self.flush()

    def flush(self) -> int:
        """Write the pending summaries now; return how many lines were written."""
        with self._lock:
            counts, self._counts = self._counts, {}
        written = 0
        for (client, event, reason), n in counts.items():
            summary = f"{reason or event} x{n}"
            try:
                self.audit.record(event, client_id=client, outcome="denied", reason=summary)
                written += 1
            except Exception:
                log.exception("could not append a refusal summary to the audit log")
        return written

    def pending(self) -> dict[_Key, int]:
        """The counts not yet written (a copy)."""
        with self._lock:
            return dict(self._counts)

    def close(self) -> None:
        """Write what is pending and stop the timer. Idempotent."""
        with self._lock:
            self._closed = True
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        self.flush()

    def __repr__(self) -> str:
        return f"RefusalAggregator(interval={self.interval}, pending={len(self._counts)})"

    def __getstate__(self) -> Any:  # pragma: no cover - holds a lock and a timer
        raise TypeError("RefusalAggregator can not be pickled")

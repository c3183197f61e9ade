"""The expiry sweep: deletes expired, closed and past-retention sessions in bounded steps.

Split out of :class:`~stuisession.service.core.SessionService`, which owns one
:class:`Sweeper` (``service.sweeper``) and delegates ``sweep_step``/``cleanup_expired``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import attrs

from stuisession.errors import IntegrityError, SessionNotFound, StuiSessionError
from stuisession.state.model import SessionInfo, SessionStatus
from stuisession.stores.base import ChangeEvent

if TYPE_CHECKING:
    from stuisession.service.core import SessionService

log = logging.getLogger("stuisession.service")


@attrs.frozen
class SweepResult:
    """What one step of the expiry sweep did."""

    scanned: int
    removed: int
    #: True when this step finished a full pass over the store
    done: bool


class Sweeper:
    """A resumable cursor over the store that deletes what the service's policy says is due.

    Thread-safe: steps are serialised by a lock.
    """

    def __init__(self, service: SessionService) -> None:
        self.service = service
        self._sweep_lock = threading.Lock()
        self._sweep_cursor: Iterator[SessionInfo] | None = None

    def _due_for_sweep(self, info: SessionInfo) -> bool:
        """True when the sweep deletes *info*: expired, closed or past retention."""
        now = self.service.clock.now()
        return not info.is_active(now) or self.service.expired_by_retention(info, now)

    def sweepable(self) -> Iterator[SessionInfo]:
        return (info for info in self.service.store.iter_infos() if self._due_for_sweep(info))

    def step(self, max_items: int | None = None) -> SweepResult:
        """One bounded step of the expiry sweep: examine at most *max_items* sessions.

        The sweep keeps a cursor between steps, so memory stays flat however
        large the store is, and a caller can interleave steps with live
        requests. Deletions are audited (event ``expire``).
        """
        limit = max_items or self.service.policy.sweep_batch
        scanned = removed = 0
        with self._sweep_lock:
            if self._sweep_cursor is None:
                self._sweep_cursor = self._iter_all_infos()
            cursor = self._sweep_cursor
            try:
                for info in cursor:
                    scanned += 1
                    if info is not _SKIP and self._sweep_one(info):
                        removed += 1
                    if scanned >= limit:
                        return SweepResult(scanned=scanned, removed=removed, done=False)
            except BaseException:
                # a failed read ends the generator: start the next step afresh
                # instead of reporting an exhausted cursor as a finished pass
                self._sweep_cursor = None
                raise
            self._sweep_cursor = None
        return SweepResult(scanned=scanned, removed=removed, done=True)

    def _iter_all_infos(self) -> Iterator[SessionInfo]:
        # yields every examined session so a step is bounded by sessions read,
        # not by sessions removed
        for sid in self.service.store.ids():
            try:
                yield self.service.store.load_info(sid)
            except (SessionNotFound, IntegrityError):
                yield _SKIP

    def _sweep_one(self, info: SessionInfo) -> bool:
        if not self._due_for_sweep(info):
            return False
        try:
            removed = self.service.store.delete(info.session_id)
        except StuiSessionError:  # pragma: no cover - raced with another sweeper
            return False
        if removed:
            reason = "closed" if info.status is SessionStatus.CLOSED else "expired"
            self.service.audit_event(
                "expire", client_id=info.client_id, session_id=info.session_id, reason=reason
            )
            if self.service.store.has_change_listeners:
                event = "deleted" if reason == "closed" else "expired"
                self.service.store.announce(ChangeEvent.of(info, event))
        return removed

    def full_pass(self) -> int:
        """A full sweep: delete expired, closed and past-retention sessions; return how many."""
        removed = 0
        while True:
            step = self.step()
            removed += step.removed
            if step.done:
                break
        if removed:
            log.info("swept %d expired or closed sessions", removed)
        return removed


#: placeholder for an unreadable record in the sweep cursor
_SKIP: Any = object()

__all__ = ["SweepResult", "Sweeper"]

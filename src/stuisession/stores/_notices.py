"""Change-notice delivery for :class:`~stuisession.stores.base.SessionStore` (a mixin).

Kept apart from the base class so it stays small; the notice itself
(:class:`~stuisession.stores.base.ChangeEvent`) and the listener type live in
:mod:`stuisession.stores.base`. See ``docs/notifications.md``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stuisession.stores.base import ChangeEvent, ChangeListener

_log = logging.getLogger("stuisession.stores")


class ChangeNotices:
    """Listeners of a store and the notice pending for the current thread's write."""

    _listeners: tuple[ChangeListener, ...]
    _listeners_lock: threading.Lock
    _pending_notice: threading.local

    def _init_notices(self) -> None:
        self._listeners = ()
        self._listeners_lock = threading.Lock()
        self._pending_notice = threading.local()

    def add_change_listener(self, listener: ChangeListener) -> None:
        """Call *listener* with every :class:`ChangeEvent` this store learns of.

        This base delivers the changes announced through this store object (in
        this process). A store shared by several processes may deliver theirs too
        (the Redis store does, through Redis PUBLISH; see :meth:`announce`).
        A listener must be quick and must not raise (an exception is logged).
        """
        with self._listeners_lock:
            self._listeners = (*self._listeners, listener)

    def remove_change_listener(self, listener: ChangeListener) -> None:
        """Stop calling *listener* (no error if it was not added)."""
        with self._listeners_lock:
            self._listeners = tuple(x for x in self._listeners if x is not listener)

    @property
    def has_change_listeners(self) -> bool:
        """True when someone listens (the service skips building notices otherwise)."""
        return bool(self._listeners)

    @contextlib.contextmanager
    def announcing(self, event: ChangeEvent) -> Iterator[None]:
        """Announce *event* if the write(s) in the ``with`` block succeed (none if they raise).

        A backend that can publish in the same server-side step as the write takes
        the notice with :meth:`_take_notice` inside its primitive (the Redis store
        does); otherwise it is announced right after the block (:meth:`announce`).
        """
        self._pending_notice.event = event
        try:
            yield
        except BaseException:
            self._pending_notice.event = None
            raise
        pending, self._pending_notice.event = self._pending_notice.event, None
        if pending is not None:
            self.announce(pending)

    def _take_notice(self, session_id: str) -> ChangeEvent | None:
        """The notice pending for a write of *session_id* on this thread, taken (or None)."""
        event: ChangeEvent | None = getattr(self._pending_notice, "event", None)
        if event is None or event.session_id != session_id:
            return None
        self._pending_notice.event = None
        return event

    def announce(self, event: ChangeEvent) -> None:
        """Tell the listeners that a write committed (called right after it, by the service).

        A hint, at most once: a process that dies between the write and this
        call loses the notice (never the write). Never raises.
        """
        self._deliver(event)

    def _deliver(self, event: ChangeEvent) -> None:
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                _log.exception("a change listener failed")

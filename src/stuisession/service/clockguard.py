"""The expiry sweep's clock check: never delete on a clock that can be shown wrong.

Two kinds of evidence (``Policy.max_clock_skew`` is the tolerance, seconds):

* the wall clock moved differently from the monotonic clock since this
  service's first sweep pass (a step forwards or backwards, e.g. a bad NTP
  server or a manual ``date``): refused until the two agree again;
* a session record carries an access or change time further in the future
  than the tolerance (another node, or this one before a backward step,
  wrote it): refused for the rest of that pass.

Refusals are logged and audited (event ``expire``, outcome ``denied``) once per
reason and pass.
"""

from __future__ import annotations

import time

from stuisession.clock import Clock
from stuisession.state.model import SessionInfo


class ClockGuard:
    """Decides whether the sweep may trust *clock* right now."""

    def __init__(self, clock: Clock, max_skew: float) -> None:
        self.clock = clock
        self.max_skew = float(max_skew)
        self._offset: float | None = None  # wall - monotonic at the first pass
        self._pass_refusal: str | None = None
        self._reported: set[str] = set()

    def _monotonic(self) -> float:
        mono = getattr(self.clock, "monotonic", None)
        return float(mono()) if callable(mono) else time.monotonic()

    def begin_pass(self) -> None:
        """Start a sweep pass: check for a step of the wall clock since the first pass."""
        self._reported.clear()
        self._pass_refusal = None
        offset = self.clock.now() - self._monotonic()
        if self._offset is None:
            self._offset = offset
        elif abs(offset - self._offset) > self.max_skew:
            step = offset - self._offset
            self._pass_refusal = (
                f"the wall clock stepped {step:+.0f} s since the first sweep "
                f"(tolerance {self.max_skew:.0f} s)"
            )

    def refusal(self, info: SessionInfo, now: float) -> str | None:
        """Why deleting *info* at *now* is not safe, or None when it is."""
        if self._pass_refusal is not None:
            return self._pass_refusal
        newest = max(info.last_accessed, info.last_modified)
        if newest > now + self.max_skew:
            self._pass_refusal = (
                f"a session was used {newest - now:.0f} s in this clock's future "
                f"(tolerance {self.max_skew:.0f} s)"
            )
            return self._pass_refusal
        return None

    def first_report(self, reason: str) -> bool:
        """True the first time *reason* comes up in this pass (to log it once)."""
        if reason in self._reported:
            return False
        self._reported.add(reason)
        return True

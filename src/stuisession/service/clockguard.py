"""Clock safety: the service's time that survives a backward step, and the
sweep's check that never deletes on a clock it can show is wrong.

:class:`TrustedClock` is what the service stamps records with: the wall clock,
except while it is more than a second behind the latest reading (a backward
step), when it continues from that reading by elapsed monotonic time. So a
session in continuous use keeps getting fresh access times, and a session
created during the step is not dated in the past; when the wall clock is
corrected, nothing looks idle that was not.

:class:`ClockGuard` gives the expiry sweep three kinds of evidence
(``Policy.max_clock_skew`` is the tolerance, seconds):

* the wall clock moved differently from the monotonic clock since this
  service's first sweep pass (a step forwards or backwards, e.g. a bad NTP
  server or a manual ``date``): refused until the two agree again;
* a session record carries an access or change time further in the future
  than the tolerance (another node, or this one before a backward step,
  wrote it): refused for the rest of that pass;
* activity newer than anything seen in the previous pass (another bridge is
  writing) is dated further in this clock's past than the real time elapsed
  since then allows: this clock is ahead of the bridges that serve the
  sessions. Refused from then on, until new activity shows the clocks agree.

Refusals are logged and audited (event ``expire``, outcome ``denied``) once per
reason and pass.
"""

from __future__ import annotations

import threading
import time

from stuisession.clock import Clock
from stuisession.state.model import SessionInfo

#: a wall clock this far (seconds) behind its latest reading is a backward step
BACKWARD_TOLERANCE = 1.0


def _monotonic(clock: Clock) -> float:
    mono = getattr(clock, "monotonic", None)
    return float(mono()) if callable(mono) else time.monotonic()


def _activity(info: SessionInfo) -> float:
    return max(info.last_accessed, info.last_modified, info.created_at)


class TrustedClock:
    """Unix seconds from *clock* that follow elapsed real time through a backward step.

    The monotonic clock extrapolates the last consistent reading. A wall clock
    behind that by more than :data:`BACKWARD_TOLERANCE` seconds (a backward
    step) is ignored: the extrapolation is used until the wall clock catches
    up. A wall clock ahead of it (a forward step) is used as it is, but not
    trusted as a new reference, so when the step is corrected, time is where
    it would have been (the sweep's :class:`ClockGuard` refuses to delete on it).
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._anchor: tuple[float, float] | None = None  # (wall, monotonic), consistent
        self._lock = threading.Lock()

    def now(self) -> float:
        """The current time, Unix seconds."""
        wall = self.clock.now()
        mono = _monotonic(self.clock)
        with self._lock:
            if self._anchor is None:
                self._anchor = (wall, mono)
                return wall
            expected = self._anchor[0] + max(0.0, mono - self._anchor[1])
            if wall < expected - BACKWARD_TOLERANCE:
                return expected  # stepped back: continue by real elapsed time
            if wall <= expected + BACKWARD_TOLERANCE:
                self._anchor = (wall, mono)  # consistent (small slews re-anchor)
            return wall


class ClockGuard:
    """Decides whether the sweep may trust *clock* right now."""

    def __init__(self, clock: Clock, max_skew: float) -> None:
        self.clock = clock
        self.max_skew = float(max_skew)
        self._offset: float | None = None  # wall - monotonic at the first pass
        self._pass_refusal: str | None = None
        self._reported: set[str] = set()
        # newest activity seen by the previous complete pass, and when it began
        self._seen: float | None = None
        self._seen_mono = 0.0
        self._pass_seen = float("-inf")
        self._pass_mono = 0.0
        self._pass_agrees = self._pass_disagrees = False
        self._ahead: str | None = None  # latched: this clock is ahead of the writers

    def begin_pass(self) -> None:
        """Start a sweep pass: check for a step of the wall clock since the first pass."""
        self._reported.clear()
        self._pass_refusal = None
        self._pass_seen = float("-inf")
        self._pass_agrees = self._pass_disagrees = False
        self._pass_mono = _monotonic(self.clock)
        offset = self.clock.now() - self._pass_mono
        if self._offset is None:
            self._offset = offset
        elif abs(offset - self._offset) > self.max_skew:
            step = offset - self._offset
            self._pass_refusal = (
                f"the wall clock stepped {step:+.0f} s since the first sweep "
                f"(tolerance {self.max_skew:.0f} s)"
            )

    def end_pass(self) -> None:
        """A pass went over the whole store: its newest activity is the new reference
        (an empty store too: anything written later is new activity)."""
        self._seen = self._pass_seen if self._seen is None else max(self._seen, self._pass_seen)
        self._seen_mono = self._pass_mono
        if self._pass_agrees and not self._pass_disagrees:
            self._ahead = None  # fresh activity agrees with this clock again

    def observe(self, info: SessionInfo, now: float) -> None:
        """Take *info*'s times as evidence about this clock (every record the sweep reads)."""
        activity = _activity(info)
        self._pass_seen = max(self._pass_seen, activity)
        if self._seen is None or activity <= self._seen:
            return
        # written after the previous pass read the store: at most this long ago
        elapsed = _monotonic(self.clock) - self._seen_mono
        lag = now - activity
        if lag > elapsed + self.max_skew:
            self._pass_disagrees = True
            self._ahead = (
                f"this clock is {lag - elapsed:.0f} s ahead of the bridges writing the "
                f"sessions (tolerance {self.max_skew:.0f} s)"
            )
        else:
            self._pass_agrees = True

    def refusal(self, info: SessionInfo, now: float) -> str | None:
        """Why deleting *info* at *now* is not safe, or None when it is."""
        if self._pass_refusal is not None:
            return self._pass_refusal
        if self._ahead is not None:
            return self._ahead
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

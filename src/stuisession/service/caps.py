"""Global caps: total sessions, creates per second across all clients, disk used,
and the decoded size of one session's state.

Per-client limits (``max_sessions_per_client``, the rate limit) do not stop an
attacker who makes up fresh client ids; these caps do. Each refusal is a
:class:`~stuisession.errors.SessionError` (upstream's type) with
``details.code`` naming the cap (``"CapacityExceeded"``) and ``details.cap``
which one; refusals are audited as summaries (:mod:`stuisession.security.aggregate`).

Counting costs: the session total is read from the store at most every
:data:`RECOUNT_INTERVAL` seconds and advanced by the creates made since, and
the disk use is measured at most every :data:`DISK_INTERVAL` seconds, so a
create costs O(1) (the caps may overshoot by what other processes sharing the
store created within one interval).
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from stuisession import _json
from stuisession.errors import RateLimited, SessionError, StateTooLarge
from stuisession.policy import Policy
from stuisession.security.ratelimit import TokenBucketLimiter
from stuisession.state.forms import to_wire_dict
from stuisession.state.schema import SessionState
from stuisession.stores.base import SessionStore

__all__ = ["CapacityExceeded", "GlobalCaps", "StateSizeGuard", "disk_usage"]

#: seconds between recounts of the sessions in the store
RECOUNT_INTERVAL = 5.0
#: seconds between measurements of the store's disk use
DISK_INTERVAL = 10.0


class CapacityExceeded(SessionError):
    """A global cap refused a create (upstream type ``SessionError``)."""

    error_code = "CapacityExceeded"

    def __init__(self, message: str, cap: str, limit: float) -> None:
        super().__init__(message, cap=cap, limit=limit)
        self.cap = cap


def disk_usage(root: str) -> int:
    """Bytes of the regular files under *root* (symlinks are not followed)."""
    total = 0
    stack = [root]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        elif entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_blocks * 512
                    except OSError:
                        continue
        except OSError:
            continue
    return total


class GlobalCaps:
    """The cross-client caps on creating sessions. Thread-safe.

    :param now: monotonic time source (tests inject one).
    """

    def __init__(
        self,
        store: SessionStore,
        policy: Policy,
        *,
        now: Callable[[], float] = time.monotonic,
        count: Callable[[], int] | None = None,
        disk: Callable[[], int] | None = None,
    ) -> None:
        self.policy = policy
        self._now = now
        self._count = count or (lambda: store.statistics(time.time()).total_sessions)
        root = getattr(store, "root", None)
        self._disk = disk or (None if root is None else (lambda: disk_usage(str(root))))
        self._lock = threading.Lock()
        self._total: int | None = None
        self._counted_at = -float("inf")
        self._disk_used: int | None = None
        self._disk_at = -float("inf")
        rate = policy.max_creates_per_second
        self._creates = (
            None if rate is None else TokenBucketLimiter(rate, max(1, int(rate)), clock=_Mono(now))
        )

    def check_create(self) -> None:
        """Raise :class:`CapacityExceeded` if a new session would break a cap; else count it."""
        policy = self.policy
        if self._creates is not None:
            try:
                self._creates.check("*")
            except RateLimited as exc:
                raise CapacityExceeded(
                    "The server is creating sessions at its limit of "
                    f"{policy.max_creates_per_second:g} per second; retry later",
                    "max_creates_per_second",
                    policy.max_creates_per_second or 0,
                ) from exc
        with self._lock:
            now = self._now()
            if policy.max_sessions_total is not None:
                if self._total is None or now - self._counted_at >= RECOUNT_INTERVAL:
                    self._total = self._count()
                    self._counted_at = now
                if self._total >= policy.max_sessions_total:
                    raise CapacityExceeded(
                        f"The server holds its limit of {policy.max_sessions_total} sessions",
                        "max_sessions_total",
                        policy.max_sessions_total,
                    )
                self._total += 1
            if policy.max_store_bytes is not None and self._disk is not None:
                if self._disk_used is None or now - self._disk_at >= DISK_INTERVAL:
                    self._disk_used = self._disk()
                    self._disk_at = now
                if self._disk_used >= policy.max_store_bytes:
                    raise CapacityExceeded(
                        f"The session store uses its limit of {policy.max_store_bytes} bytes",
                        "max_store_bytes",
                        policy.max_store_bytes,
                    )


class _Mono:
    def __init__(self, now: Callable[[], float]) -> None:
        self.now = now


class StateSizeGuard:
    """Enforces ``Policy.max_state_bytes`` on the decoded JSON size of a state.

    Encoding the whole state on every update would undo the journal's O(change)
    updates, so the guard remembers each session's last known size (an LRU of
    ``max_entries``) and adds an upper bound of what an update can add (twice
    its encoded size plus 1 KiB); only when that estimate crosses the limit, or
    the size is not known, is the state encoded and measured exactly.
    """

    def __init__(self, limit: int | None, max_entries: int = 10_000) -> None:
        self.limit = limit
        self.max_entries = max_entries
        self._sizes: OrderedDict[tuple[str, int], int] = OrderedDict()
        self._lock = threading.Lock()

    def check(
        self,
        session_id: str,
        base_revision: int,
        state: SessionState,
        update_bytes: int,
        revision: int,
    ) -> None:
        """Raise :class:`StateTooLarge` if *state* (revision *revision*) is over the limit."""
        if self.limit is None:
            return
        with self._lock:
            known = self._sizes.pop((session_id, base_revision), None)
        estimate = None if known is None else known + 2 * update_bytes + 1024
        if estimate is None or estimate > self.limit:
            estimate = exact_state_size(state)
            if estimate > self.limit:
                raise StateTooLarge(
                    f"session state would be {estimate} bytes decoded, "
                    f"over the limit of {self.limit}",
                    size=estimate,
                    limit=self.limit,
                    limit_name="max_state_bytes",
                )
        with self._lock:
            self._sizes[(session_id, revision)] = estimate
            while len(self._sizes) > self.max_entries:
                self._sizes.popitem(last=False)


def exact_state_size(state: SessionState) -> int:
    """The decoded (JSON) size of *state* in bytes."""
    data: Any = to_wire_dict(state)
    return len(_json.dumps(data))

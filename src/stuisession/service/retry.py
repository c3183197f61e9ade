"""The one compare-and-swap retry loop of the service (and the admin tools).

Every write of a session record is a compare-and-swap on the record version
(see :meth:`stuisession.stores.base.SessionStore.save`). A step reads, computes
and writes; when its write loses the race it returns :data:`AGAIN` and the
step runs again on a fresh read, at most ``attempts`` times.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, TypeVar

from stuisession.errors import ConflictError

_T = TypeVar("_T")


class _Again:
    def __repr__(self) -> str:
        return "AGAIN"


#: returned by a step whose compare-and-swap lost: read again and retry
AGAIN: Final = _Again()


def cas_retry(attempts: int, step: Callable[[], _T | _Again], what: str = "the change") -> _T:
    """Run *step* until it returns something other than :data:`AGAIN`.

    Raises :class:`~stuisession.errors.ConflictError` after *attempts* lost races
    (``Policy.max_update_retries`` in the service).
    """
    for _ in range(attempts):
        result = step()
        if not isinstance(result, _Again):
            return result
    raise ConflictError(f"Session is being changed too often; retry {what}")

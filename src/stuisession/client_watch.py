"""Watching a session: a local copy kept in sync by change notices.

:class:`SessionWatch` (and :func:`apply_changes`) live here to keep
:mod:`stuisession.client` small; both are re-exported from it, the import path
callers use (``from stuisession.client import SessionWatch``).
"""

from __future__ import annotations

import json
from types import TracebackType
from typing import TYPE_CHECKING, Any

from stuisession.errors import StuiSessionError

if TYPE_CHECKING:
    from stuisession.client import SessionClient

__all__ = ["SessionWatch", "apply_changes"]


#: members of a ``restore_session`` reply that are not state sections (the record,
#: the delta fields, and the change log ``changes``, which deltas do not carry)
_RECORD_MEMBERS = frozenset(
    {
        "session_id",
        "client_id",
        "created_at",
        "last_modified",
        "timeout",
        "is_active",
        "revision",
        "lineage",
        "time_until_expiry",
        "delta",
        "since_revision",
        "session_id_rotated",
        "resume_token",
        "changes",
    }
)
#: notices after which the session can not be followed any further
_FINAL_EVENTS = frozenset({"closed", "expired", "deleted"})


def apply_changes(state: dict[str, Any], ops: list[dict[str, Any]]) -> None:
    """Apply ``restore_session`` delta operations (``{"path", "value"}`` or
    ``{"path", "delete": true}``, over the wire form) to *state* in place."""
    for op in ops:
        path = op["path"]
        doc = state
        for key in path[:-1]:
            child = doc.get(key)
            if not isinstance(child, dict):
                child = doc[key] = {}
            doc = child
        if op.get("delete"):
            doc.pop(path[-1], None)
        else:
            doc[path[-1]] = op["value"]


class SessionWatch:
    """A local copy of a session kept in sync by change notices (``docs/notifications.md``).

    Notices are hints, deltas are truth: on each burst of notices the copy is brought
    up to date with ``restore_session`` + ``since_revision`` (a full restore when the
    change log no longer reaches back, or the lineage changed). A gap in revisions,
    a dropped subscription or a reconnect costs nothing more than that one restore.

    :param client: an opened :class:`SessionClient` (its session, credentials, socket).
    :param notify_endpoint: the bridge's ``--notify`` endpoint (e.g. ``tcp://127.0.0.1:5556``).
    :param context: a :class:`zmq.Context` (default: the client's).

    Attributes: ``state`` (dict: the state sections as a full restore returns them,
    without the change log ``changes``), ``revision`` (int), ``lineage`` (str or None),
    ``ended`` (the final notice: ``"closed"``, ``"expired"`` or ``"deleted"``; None
    while the session lives), ``syncs``/``full_syncs`` (counts).
    """

    def __init__(self, client: SessionClient, notify_endpoint: str, *, context: Any = None) -> None:
        self.client = client
        self.endpoint = notify_endpoint
        self._zmq = client._zmq  # noqa: SLF001 - companion module
        self._ctx = context or client._ctx  # noqa: SLF001 - companion module
        self._sub: Any = None
        self.subscription: str | None = None
        self.topic: bytes | None = None
        self.state: dict[str, Any] = {}
        self.revision: int | None = None
        self.lineage: str | None = None
        self.ended: str | None = None
        self.syncs = 0
        self.full_syncs = 0
        self.notices = 0

    def start(self) -> None:
        """Get a subscription token (``watch_session``), subscribe, and sync fully.

        Raises :class:`RequestFailed` (e.g. ``SessionNotFound``) and
        :class:`ServerUnavailable` as :meth:`SessionClient.call`.
        """
        result = self.client._session_call("watch_session")  # noqa: SLF001 - companion module
        self.subscription = str(result["subscription"])
        self.topic = str(result["topic"]).encode("ascii")
        self._subscribe()
        self.sync(full=True)

    def _subscribe(self) -> None:
        zmq = self._zmq
        sub = self._ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.connect(self.endpoint)
        assert self.subscription is not None and self.topic is not None
        # the token is the proof (the bridge subscribes this pipe to the topic); the
        # topic opens this socket's own filter (a SUB filters what it receives too)
        sub.setsockopt(zmq.SUBSCRIBE, self.subscription.encode("ascii"))
        sub.setsockopt(zmq.SUBSCRIBE, self.topic)
        self._sub = sub

    def resubscribe(self) -> None:
        """Drop the subscription socket, subscribe again on a new one, and catch up."""
        self._close_socket()
        self._subscribe()
        self.sync()

    def sync(self, *, full: bool = False) -> bool:
        """Bring the copy up to date now; True if anything changed. Raises as ``restore``."""
        since = None if full or self.revision is None else self.revision
        result: dict[str, Any] = dict(self.client.restore(since_revision=since))
        lineage = result.get("lineage")
        if since is not None and lineage != self.lineage:
            # another history (issue 14): the delta is against a revision we never had
            result = dict(self.client.restore())
            lineage = result.get("lineage")
        self.syncs += 1
        before = self.revision
        if result.get("delta"):
            apply_changes(self.state, list(result.get("changes") or []))
        else:
            self.full_syncs += 1
            self.state = {k: v for k, v in result.items() if k not in _RECORD_MEMBERS}
        self.revision = int(result["revision"])
        self.lineage = None if lineage is None else str(lineage)
        return self.revision != before

    def poll(self, timeout: float = 0.0) -> bool:
        """Wait up to *timeout* seconds for notices, take all that are queued, and sync
        once if any says the copy is behind (or another lineage). True if it synced."""
        zmq = self._zmq
        if self._sub is None:
            raise StuiSessionError("the watch is closed")
        if not self._sub.poll(max(0, int(timeout * 1000)), zmq.POLLIN):
            return False
        behind = False
        while True:
            try:
                _topic, body = self._sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            except ValueError:  # not two frames: not a notice of ours
                continue
            self.notices += 1
            try:
                notice = json.loads(body)
                revision = int(notice["revision"])
                event = str(notice["event"])
            except (ValueError, KeyError, TypeError):
                continue
            if event in _FINAL_EVENTS:
                self.ended = event
            if (
                self.revision is None
                or revision != self.revision
                or notice.get("lineage", self.lineage) != self.lineage
            ):
                behind = True
        if behind and self.ended is None:
            self.sync()
            return True
        return False

    def _close_socket(self) -> None:
        if self._sub is not None:
            self._sub.close(linger=0)
            self._sub = None

    def close(self) -> None:
        """Close the subscription socket (the client stays open)."""
        self._close_socket()

    def __enter__(self) -> SessionWatch:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

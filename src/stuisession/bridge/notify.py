"""Change notices on a ZeroMQ XPUB socket (``serve --notify``; ``docs/notifications.md``).

The socket runs in manual subscription mode (``XPUB_MANUAL``): a subscriber's
``SUBSCRIBE`` frame is only a request, and the :class:`Notifier` decides what the
subscriber's pipe is subscribed to. A request is honoured only with a proof of
holding the session:

* a subscription token from ``watch_session`` (:mod:`stuisession.security.subscriptions`),
  still valid for the session's token generation; or
* ``id.<session_id>`` on a CURVE connection whose authenticated identity
  (ZAP ``User-Id``) *identity_client* maps to the session's client id.

Then the pipe is subscribed to the session's opaque topic (never what the
subscriber asked for), and a ``subscribed`` notice with the current revision is
published on it, so a subscriber knows from when on it hears every change. Any
other request -- the empty prefix, a topic, a guess, another session's token -- is
dropped: that pipe matches no notice.

A notice is two frames: the topic and a JSON object ``{"event", "revision"}``
(plus ``"lineage"`` when the session record has one); nothing of the state.
Notices come from the store's change listeners (:meth:`SessionStore.add_change_listener`)
on any thread; one thread owns the socket.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import queue
import re
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from stuisession import _json
from stuisession.errors import StuiSessionError
from stuisession.ids import is_valid_session_id
from stuisession.security.subscriptions import TOPIC_PREFIX
from stuisession.stores.base import ChangeEvent

if TYPE_CHECKING:
    from stuisession.service.core import SessionService

__all__ = ["CURVE_PREFIX", "Notifier", "notice_body"]

log = logging.getLogger("stuisession.notify")

#: subscription form for a CURVE-authenticated subscriber: ``id.<session_id>``
CURVE_PREFIX = b"id."
#: notices queued for the socket thread before new ones are dropped (hints)
MAX_QUEUED = 100_000


def notice_body(event: str, revision: int, lineage: str | None) -> bytes:
    """The JSON body of a notice: ``{"event", "revision"[, "lineage"]}``.

    The same bytes as encoding the object with :func:`stuisession._json.dumps`
    (``test_notice_body_is_the_compact_json_object``), built without the encoder.
    """
    if type(revision) is not int or not _PLAIN.fullmatch(event):
        doc: dict[str, Any] = {"event": event, "revision": revision}
        if lineage is not None:
            doc["lineage"] = lineage
        return _json.dumps(doc)
    head = b'{"event":"%s","revision":%d' % (event.encode("ascii"), revision)
    if lineage is None:
        return head + b"}"
    return head + b',"lineage":' + _encoded_lineage(lineage) + b"}"


#: an event name that needs no JSON escaping
_PLAIN = re.compile(r"[a-z_]{1,32}")


@functools.lru_cache(maxsize=1024)
def _encoded_lineage(lineage: str) -> bytes:
    return _json.dumps(lineage)


class Notifier:
    """Publishes the store's change notices to subscribers who prove they may see them.

    :param service: verifies subscriptions (``check_watch``) and owns the store whose
        changes are published.
    :param bind: the ZeroMQ endpoint of the XPUB socket (e.g. ``tcp://127.0.0.1:5556``).
    :param context: the :class:`zmq.Context` to make the socket in.
    :param identity_client: maps a CURVE ``User-Id`` to the client id (or ids) it is bound to
        (None: CURVE subscriptions are refused).
    :param hwm: notices queued per subscriber before ZeroMQ drops more (slow subscribers
        lose notices, never slow the bridge).
    :param setup: called with the XPUB socket before it is bound (e.g. to make it a
        CURVE server: ``curve_server``, ``curve_secretkey``, ``zap_domain``).

    Raises :class:`zmq.ZMQError` for a bad or busy endpoint. The thread starts at once;
    :meth:`close` stops it.
    """

    def __init__(
        self,
        service: SessionService,
        bind: str,
        context: Any,
        *,
        identity_client: Callable[[str], str | frozenset[str] | None] | None = None,
        hwm: int = 10_000,
        setup: Callable[[Any], None] | None = None,
    ) -> None:
        import zmq

        self._zmq = zmq
        self.service = service
        self.identity_client = identity_client
        self.published = 0
        self.granted = 0
        self.refused = 0
        self._queue: queue.SimpleQueue[ChangeEvent | None] = queue.SimpleQueue()
        #: a wake-up byte is in the pipe and not yet drained (set by producers)
        self._wake_pending = False
        #: threads whose notices wait for kick(); whether one is waiting
        self._deferring = threading.local()
        self._kick_due = False
        self._stopping = threading.Event()
        sock = self._socket = context.socket(zmq.XPUB)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.XPUB_MANUAL, 1)
            sock.setsockopt(zmq.SNDHWM, hwm)
            sock.setsockopt(zmq.RCVHWM, 1000)
            sock.setsockopt(zmq.MAXMSGSIZE, 4096)  # subscription requests are small
            if setup is not None:
                setup(sock)
            if "[" in bind:
                sock.setsockopt(zmq.IPV6, 1)
            sock.bind(bind)
            self.bound_endpoint: str = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        except BaseException:
            sock.close(linger=0)
            raise
        # producers wake the socket thread through a pipe (os.write is thread-safe;
        # a ZeroMQ socket is not)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        service.store.add_change_listener(self.post)
        self._thread = threading.Thread(target=self._run, name="stuisession-notify", daemon=True)
        self._thread.start()

    # -- producers (any thread) ---------------------------------------------------------
    def post(self, event: ChangeEvent) -> None:
        """Queue *event* for publishing (a change listener; never blocks or raises).

        This runs on the writer's thread, before its reply is sent: a queue put, and
        a pipe write only when the socket thread is not already due to wake.
        """
        if self._queue.qsize() >= MAX_QUEUED:
            return  # hints: a stalled socket thread must not grow memory without bound
        self._queue.put(event)
        if getattr(self._deferring, "on", False):
            self._kick_due = True  # sent once the request's reply is out (kick)
            return
        self._wake()

    @contextlib.contextmanager
    def deferring(self) -> Iterator[None]:
        """Notices posted on this thread meanwhile wait for :meth:`kick` (the bridge's
        worker threads, while handling a request: the writer's reply goes out first,
        without the socket thread competing for the GIL and the cores)."""
        self._deferring.on = True
        try:
            yield
        finally:
            self._deferring.on = False

    def kick(self) -> None:
        """Wake the socket thread for notices held back by :meth:`deferring` (cheap if none)."""
        if self._kick_due:
            self._kick_due = False
            self._wake()

    def _wake(self) -> None:
        if not self._wake_pending:
            self._wake_pending = True
            with contextlib.suppress(OSError):  # a full pipe already means "wake up"
                os.write(self._wake_w, b"!")

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread and close the socket (idempotent)."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self.service.store.remove_change_listener(self.post)
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"!")
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._socket.close(linger=0)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def statistics(self) -> dict[str, int]:
        """Counts since start: notices published, subscriptions granted and refused."""
        return {"published": self.published, "granted": self.granted, "refused": self.refused}

    # -- the socket thread ----------------------------------------------------------------
    def _run(self) -> None:
        zmq = self._zmq
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        while not self._stopping.is_set():
            try:
                events = dict(poller.poll(1000))
            except zmq.ZMQError:  # pragma: no cover - context terminated under us
                return
            if self._wake_r in events:
                with contextlib.suppress(OSError):
                    while os.read(self._wake_r, 4096):
                        pass
            # cleared after the pipe is drained and before the queue is: a post that
            # saw it set is in the queue already; any later post writes a new byte
            self._wake_pending = False
            self._publish_pending()
            if self._socket in events:
                for _ in range(256):
                    try:
                        frame = self._socket.recv(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._on_subscription(frame)

    def _publish_pending(self) -> None:
        topic_of = self.service.subscriptions.topic  # remembered per session
        get = self._queue.get_nowait
        while True:
            try:
                event = get()
            except queue.Empty:
                return
            if event is None:
                continue
            self._send(
                topic_of(event.session_id),
                notice_body(event.event, event.revision, event.lineage),
            )

    def _send(self, topic: bytes, body: bytes) -> None:
        zmq = self._zmq
        try:
            # XPUB never blocks: a subscriber at its HWM simply misses this notice
            self._socket.send(topic, zmq.SNDMORE | zmq.NOBLOCK)
            self._socket.send(body, zmq.NOBLOCK)
            self.published += 1
        except zmq.ZMQError as exc:  # pragma: no cover - only on shutdown
            log.debug("notice not sent: %s", exc)

    def _on_subscription(self, frame: Any) -> None:
        """Grant or drop one (un)subscription request, for the pipe that sent it."""
        zmq = self._zmq
        data = frame.bytes
        if not data or data[0] not in (0, 1):
            return  # not a subscription message (XPUB passes other messages up too)
        subscribe, request = data[0] == 1, data[1:]
        if request.startswith(TOPIC_PREFIX):
            # a watcher's own filter (it subscribes to its topic too): never granted,
            # and not a refusal worth counting or auditing
            return
        info = self._verify(request, frame)
        if info is None:
            if subscribe:
                self.refused += 1
                self.service.audit_event("watch", outcome="denied", reason="invalid subscription")
            return
        topic = self.service.subscriptions.topic(info.session_id)
        # in manual mode these act on the pipe of the message just received
        self._socket.setsockopt(zmq.SUBSCRIBE if subscribe else zmq.UNSUBSCRIBE, topic)
        if subscribe:
            self.granted += 1
            lineage = getattr(info, "lineage", None)
            self._send(
                topic,
                notice_body("subscribed", info.revision, None if lineage is None else str(lineage)),
            )

    def _verify(self, request: bytes, frame: Any) -> Any:
        if not request:
            return None  # the empty prefix (everything) is never granted
        if request.startswith(CURVE_PREFIX):
            return self._verify_identity(request[len(CURVE_PREFIX) :], frame)
        try:
            return self.service.check_watch(request)
        except StuiSessionError:
            return None

    def _verify_identity(self, raw_id: bytes, frame: Any) -> Any:
        if self.identity_client is None:
            return None
        try:
            user_id = frame.get("User-Id")
        except Exception:  # no ZAP identity on this connection
            return None
        bound = self.identity_client(user_id) if user_id else None
        session_id = raw_id.decode("ascii", "replace")
        if bound is None or not is_valid_session_id(session_id):
            return None
        # one client id, or every client id the CURVE key is bound to
        allowed = frozenset({bound}) if isinstance(bound, str) else bound
        try:
            info = self.service.store.load_info(session_id)
        except StuiSessionError:
            return None
        if info.client_id not in allowed or not info.is_active(self.service.clock.now()):
            return None
        return info

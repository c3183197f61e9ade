"""The ZeroMQ bridge: a ROUTER socket in front of a :class:`~stuisession.ProtocolHandler`.

Upstream STUI clients talk to a REP socket with a REQ socket, one JSON frame
per message. A ROUTER socket speaks the same wire protocol to them and serves
any number of clients from one thread::

    from stuisession import FileStore, ProtocolHandler
    from stuisession.server import BridgeServer

    with BridgeServer(ProtocolHandler(FileStore("./sessions")), "tcp://127.0.0.1:5555") as srv:
        srv.serve_forever()          # until srv.stop() is called (from any thread)

Framing. A message arrives as ``[identity, *routing, body]``. The frames up to
and including the first empty frame (the REQ delimiter) are the routing
envelope and are echoed in front of the reply; without an empty frame every
frame but the last is envelope (DEALER clients: ``[identity, body]``). So REQ
clients get ``[delimiter, reply]`` and DEALER clients ``[reply]``, as they
expect. A message with no body frame after the delimiter, more than one, or
an absurd number of frames is answered with an ``InvalidRequest`` error reply
(``id`` null) instead of being handed to the handler.

Concurrency. The serving thread only moves frames. Each request is handled
on a bounded worker pool (:class:`~stuisession.dispatch.KeyedExecutor`):
requests naming the same session run in arrival order, others in parallel;
when ``max_pending`` requests are queued, further ones get a ``Busy`` error at
once. The expiry sweep runs on the pool too, so it never stalls requests.

Bridge duties (``docs/bridge.md``): connections are tracked by routing
identity (:mod:`stuisession.connections`); requests that are not session
commands are forwarded to the Pharo image when an ``upstream`` is given
(:mod:`stuisession.forwarding`), else answered with an ``UpstreamError``
("no backend"); capture hooks turn forwarded evaluations into session state.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from stuisession.bridge import housekeeping
from stuisession.bridge.budget import QueueBudget  # [budget hook]
from stuisession.bridge.connections import ConnectionTracker
from stuisession.bridge.curve import CurveConfig
from stuisession.bridge.forwarding import CaptureHooks, Upstream, capture_evaluation
from stuisession.bridge.notify import Notifier
from stuisession.bridge.pacing import LARGE_BYTES, Pacer
from stuisession.bridge.replies import error_for, error_reply, peek_fields, split_frames
from stuisession.bridge.requests import Job, RequestRouter
from stuisession.bridge.sending import ReplySender
from stuisession.bridge.sockets import (
    open_notifier,
    open_router,
    open_wake_pair,
    receive,
    zmq_module,
)
from stuisession.bridge.workers import KeyedExecutor
from stuisession.clock import Clock, SystemClock
from stuisession.errors import Busy, InternalError
from stuisession.ids import is_valid_session_id
from stuisession.security.identity import Caller

if TYPE_CHECKING:
    from stuisession.protocol.handler import ProtocolHandler

__all__ = ["BridgeServer"]

log = logging.getLogger("stuisession.server")

#: the longest wait in one poll: a lost wake-up is still noticed this quickly (seconds)
MAX_POLL_WAIT = 1.0
#: messages handled per poll wake-up before stop/sweep deadlines are checked again
BATCH = 64
#: the members of ``parameters`` the serving thread reads to route a request
_ROUTING_PARAMETERS = ("session_id", "client_id", "resume_token")
#: bounds of the interval between sweeps of idle connections (seconds)
MIN_CONNECTION_SWEEP = 0.05


#: kept under its old name: ``stuisession.cli.serve`` imports it from here
_zmq = zmq_module


class BridgeServer:
    """Serve a :class:`~stuisession.ProtocolHandler` on a ZeroMQ ROUTER socket.

    The socket is bound in the constructor, so a bad or busy address fails
    here (with :class:`zmq.ZMQError`) and :attr:`bound_endpoint` is known
    before :meth:`serve_forever` starts.

    :param handler: answers each request (``handle_wire``) and sweeps expired
        sessions (``cleanup_expired``).
    :param bind: the ZeroMQ endpoint to bind; ``tcp://127.0.0.1:*`` picks a free port.
    :param context: a :class:`zmq.Context` to use (default: a private one,
        terminated by :meth:`close`).
    :param sweep_interval: seconds between expiry sweeps (default:
        ``handler.policy.cleanup_interval``).
    :param logger: where request lines go (default ``stuisession.server``).
    :param upstream: the Pharo STUIServer to forward other requests to (None: "no backend").
    :param workers: worker threads handling requests.
    :param max_pending: requests queued or running before new ones get ``Busy``.
    :param idle_timeout: seconds without a request after which a connection
        counts as gone and its sessions as detached.
    :param curve: serve CurveZMQ with this key pair and client allow-list
        (:mod:`stuisession.bridge.curve`); None: plaintext, which logs a loud
        warning when bound beyond loopback.
    :param hooks: capture hooks for forwarded commands (default: the built-in
        ``evaluate`` capture).
    :param notify: an endpoint to publish change notices on (an XPUB socket,
        :class:`~stuisession.bridge.notify.Notifier`; None: no notices).
    :param identity_client: maps a CURVE-authenticated ``User-Id`` to its client id,
        for subscriptions proved by identity (see ``bridge/notify.py``).
    :param pace_share: this bridge's part (0, 1] of the policy's large-request
        budget (``Policy.large_request_rate`` and ``large_request_share``): one of
        *N* worker processes behind a supervisor gets 1/N.
    :param forwarded_callers: a worker behind a supervisor that serves CURVE
        (``bridge/supervisor.py``): each message starts with the caller the parent
        authenticated, which this bridge uses instead of the connection's identity.
        Only for a private endpoint that nobody but the supervisor can reach.
    """

    def __init__(
        self,
        handler: ProtocolHandler,
        bind: str = "tcp://127.0.0.1:5555",
        *,
        context: Any = None,
        sweep_interval: float | None = None,
        logger: logging.Logger | None = None,
        upstream: Upstream | None = None,
        workers: int = 8,
        max_pending: int = 1024,
        idle_timeout: float = 60.0,
        hooks: CaptureHooks | None = None,
        curve: CurveConfig | None = None,
        notify: str | None = None,
        identity_client: Callable[[str], str | frozenset[str] | None] | None = None,
        pace_share: float = 1.0,
        forwarded_callers: bool = False,
    ) -> None:
        zmq = _zmq()
        self._zmq = zmq
        self.curve = curve
        if forwarded_callers and curve is not None:
            raise ValueError("forwarded_callers is for a worker behind a CURVE supervisor")
        self.forwarded_callers = forwarded_callers
        if not 0 < pace_share <= 1:
            raise ValueError("pace_share must be in (0, 1]")
        self.pace_share = pace_share
        self._authenticator: Any = None
        self.handler = handler
        #: answers each request on a worker thread (bridge/requests.py)
        self.router = RequestRouter(self)
        #: wall time for connection bookkeeping and the bridge's own replies; the
        #: service's clock may be a manual one (tests), which must not age sockets
        self.clock: Clock = SystemClock()
        self.log = logger if logger is not None else log
        interval = handler.policy.cleanup_interval if sweep_interval is None else sweep_interval
        if not interval > 0:
            raise ValueError(f"sweep_interval must be positive, got {interval!r}")
        self.sweep_interval = float(interval)
        self._own_context = context is None
        # with notices, a second I/O thread: the fan-out of each notice to every
        # subscriber's connection then never delays the writer's reply (issue 22)
        if context is None:
            context = zmq.Context(io_threads=2 if notify is not None else 1)
        self._context = context
        self._stopping = threading.Event()
        self._idle = threading.Event()  # set while serve_forever is not running
        self._idle.set()
        self._closed = False
        self._wake_endpoint = f"inproc://stuisession-bridge-wake-{id(self):x}-{time.monotonic_ns()}"
        self._socket: Any = None
        self._wake: Any = None
        self._notify: Any = None
        self.upstream = upstream
        self.tracker = ConnectionTracker(idle_timeout)
        # [budget hook] bytes held per connection and in total (bridge/budget.py)
        self.budget = QueueBudget(
            handler.policy.max_queued_bytes_per_connection,
            handler.policy.max_queued_bytes,
            idle_timeout,
        )
        if hooks is None:
            hooks = CaptureHooks()
            hooks.register("evaluate", capture_evaluation)
        self.hooks = hooks
        self.workers = workers
        self.max_pending = max_pending
        self._executor: KeyedExecutor | None = None
        self._results: queue.SimpleQueue[tuple[list[bytes], bytes, Any, float, bytes]] = (
            queue.SimpleQueue()
        )
        self._notify_lock = threading.Lock()
        # the handler is read at each sweep: it may be replaced while serving
        cleanup = lambda: self.handler.cleanup_expired()  # noqa: E731, PLW0108
        self._expiry = housekeeping.ExpirySweeper(cleanup, self.log)
        self.started_at = self.clock.now()
        self.requests_served = 0
        handler.extra_statistics = self.bridge_statistics
        #: the change-notice publisher (``--notify``), or None
        self.notifier: Notifier | None = None
        try:
            self._socket, self.bound_endpoint, self._authenticator = open_router(
                self._context, zmq, bind, handler.policy, curve=curve, log=self.log
            )
            self._sender = ReplySender(self._socket, zmq, self.budget, self.log)
            # workers nudge the serving thread through _notify (used under a lock)
            self._wake, self._notify = open_wake_pair(self._context, zmq, self._wake_endpoint)
            self.notifier = open_notifier(
                handler.service, notify, self._context, curve, identity_client
            )
        except BaseException:
            self._close_sockets()
            self._stop_authenticator()
            if self._own_context:
                self._context.term()
            raise

    # -- lifecycle ----------------------------------------------------------------------
    def serve_forever(self) -> None:
        """Answer requests until :meth:`stop` is called. Returns promptly after that."""
        zmq = self._zmq
        if self._closed:
            raise RuntimeError("the server is closed")
        if not self._idle.is_set():
            raise RuntimeError("serve_forever is already running")
        self._idle.clear()
        self._executor = KeyedExecutor(self.workers, self.max_pending, pacer=self._pacer())
        try:
            poller = zmq.Poller()
            poller.register(self._socket, zmq.POLLIN)
            poller.register(self._wake, zmq.POLLIN)
            next_sweep = time.monotonic() + self.sweep_interval
            # idle connections are dropped on a schedule of their own: the expiry
            # sweep may run only every few minutes, much less often than idle_timeout
            conn_interval = min(
                self.sweep_interval, max(self.tracker.idle_timeout / 2, MIN_CONNECTION_SWEEP)
            )
            next_conn_sweep = time.monotonic() + conn_interval
            self.log.debug("serving on %s", self.bound_endpoint)
            while not self._stopping.is_set():
                deadline = min(next_sweep, next_conn_sweep)
                wait = min(max(deadline - time.monotonic(), 0.0), MAX_POLL_WAIT)
                events = dict(poller.poll(int(wait * 1000)))
                if self._wake in events:
                    self._drain(self._wake)
                self._flush_results()
                if self.notifier is not None:
                    self.notifier.kick()  # notices of the requests just answered
                self.budget.refresh()  # [budget hook]
                if self._socket in events:
                    for _ in range(BATCH):
                        if self._stopping.is_set():
                            break
                        try:
                            frames, caller = receive(
                                self._socket, zmq, self.curve, forwarded=self.forwarded_callers
                            )
                        except zmq.Again:
                            break
                        self._serve_one(frames, caller)
                if time.monotonic() >= next_conn_sweep:
                    housekeeping.sweep_connections(
                        self.budget, self.tracker, self.clock.now(), self.log
                    )
                    next_conn_sweep = time.monotonic() + conn_interval
                if time.monotonic() >= next_sweep and not self._stopping.is_set():
                    self._expiry.start(self._executor)
                    next_sweep = time.monotonic() + self.sweep_interval
            # graceful stop: finish what was accepted, send its replies, then return
            self._executor.shutdown()
            self._flush_results()
            if self.notifier is not None:
                self.notifier.kick()
        finally:
            self._idle.set()

    def _pacer(self) -> Pacer:
        """The large-request pacer for this bridge's part of the policy's budget."""
        policy = self.handler.policy
        rate, share = policy.large_request_rate, policy.large_request_share
        return Pacer(
            None if rate is None else rate * self.pace_share,
            None if share is None else share * self.pace_share,
        )

    def stop(self) -> None:
        """Ask :meth:`serve_forever` to return. Safe from any thread and from signal handlers."""
        self._stopping.set()
        if self._closed:
            return
        # A private PUSH socket per call: ZeroMQ sockets must not be shared between
        # threads, and the context itself is thread-safe. Python-level locks are
        # avoided on purpose so a signal handler can never deadlock here.
        zmq = self._zmq
        try:
            push = self._context.socket(zmq.PUSH)
            try:
                push.setsockopt(zmq.LINGER, 100)
                push.connect(self._wake_endpoint)
                push.send(b"stop", zmq.NOBLOCK)
            finally:
                push.close()
        except zmq.ZMQError:
            pass  # closing concurrently, or already woken: the flag is enough

    def close(self, timeout: float = 5.0) -> None:
        """Stop serving, close the sockets and (if private) terminate the context.

        Waits up to *timeout* seconds for a running :meth:`serve_forever` to
        return first. Idempotent. Does not close the handler's store: the
        caller that made it owns it.
        """
        if self._closed:
            return
        self.stop()
        if not self._idle.wait(timeout):
            # never close a socket under a thread still using it
            self.log.warning("serve_forever did not return within %.1f s", timeout)
            return
        self._closed = True
        self._close_sockets()
        self._stop_authenticator()
        if self._own_context:
            self._context.term()

    @property
    def serving(self) -> bool:
        """True while :meth:`serve_forever` runs."""
        return not self._idle.is_set()

    def __enter__(self) -> BridgeServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------
    def _close_sockets(self) -> None:
        if self.notifier is not None:
            self.notifier.close()
        for sock in (self._socket, self._wake, self._notify):
            if sock is not None:
                sock.close()

    def _drain(self, sock: Any) -> None:
        zmq = self._zmq
        while True:
            try:
                sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return

    def _stop_authenticator(self) -> None:
        if self._authenticator is not None:
            self._authenticator.stop()
            self._authenticator = None

    def _serve_one(self, frames: list[bytes | memoryview], caller: Caller | None = None) -> None:
        """Route one message (serving thread): answer framing errors, queue the rest."""
        started = time.perf_counter()
        identity = bytes(frames[0])
        envelope, body, problem = split_frames(frames)
        if problem is not None:
            self._send(envelope, error_reply(problem), None, started, identity, charge=False)
            return
        assert body is not None
        meta = peek_fields(
            body, ("id", "command", "parameters"), nested={"parameters": _ROUTING_PARAMETERS}
        )
        command = meta.get("command")
        try:  # [budget hook] before the tracker: a dropped connection's requests don't keep it
            self.budget.admit(identity.hex(), len(body))
        except Busy as exc:
            reply = error_for(meta.get("id"), exc)
            self._send(envelope, reply, command, started, identity, charge=False)
            return
        raw_params = meta.get("parameters")
        params: dict[str, Any] = raw_params if isinstance(raw_params, dict) else {}
        session_id = params.get("session_id")
        session_id = session_id if is_valid_session_id(session_id) else None
        client_id = params.get("client_id") if isinstance(params.get("client_id"), str) else None
        token = params.get("resume_token") if isinstance(params.get("resume_token"), str) else None
        ident = identity.hex()
        if caller is None:
            caller = Caller.connection(identity)
        # the session is attached only once a session command on it succeeds (_track)
        self.tracker.seen(ident, self.clock.now(), client_id=client_id)
        # one session's requests run in order; a connection's requests without a
        # (readable) session id run in order too
        key: tuple[str, str] = ("s", session_id) if session_id else ("c", ident)
        job = Job(envelope, body, command, ident, started, identity, session_id, token, caller)
        assert self._executor is not None
        try:
            self._executor.submit(
                key, lambda: self._work(job), heavy=len(body) > LARGE_BYTES, size=len(body)
            )
        except Busy as exc:
            self.budget.request_done(ident, len(body))
            reply = error_for(meta.get("id"), exc)
            self._send(envelope, reply, command, started, identity, charge=False)

    def _work(self, job: Job) -> None:
        """Handle one request (worker thread) and queue its reply for the serving thread."""
        command = job.command
        # [budget hook] a dropped connection's queued requests are skipped, unanswered
        if self.budget.dropped(job.ident):
            self.budget.request_done(job.ident, len(job.body))
            return
        # notices of this request's changes leave after its reply (serve_forever kicks)
        defer = self.notifier.deferring() if self.notifier is not None else contextlib.nullcontext()
        try:
            with defer:
                if isinstance(command, str) and command in self.handler.commands:
                    reply = self.handler.handle_wire(job.body, caller=job.caller)
                    self.router.track(job, command, reply)
                else:
                    reply = self.router.forward(job.body, command, job.ident, job.caller)
        except Exception:
            # handle_wire promises not to raise; a wrapped or buggy handler must
            # still not take the server down
            self.log.exception("handler raised; answering with an internal error")
            reply = error_reply("Internal error while handling the request", InternalError)
        finally:
            self.budget.request_done(job.ident, len(job.body))  # [budget hook]
        self._results.put((job.envelope, reply, command, job.started, job.identity))
        # a lost nudge only delays the reply until the next poll timeout
        with self._notify_lock, contextlib.suppress(self._zmq.ZMQError):
            self._notify.send(b"r", self._zmq.NOBLOCK)

    def _flush_results(self) -> None:
        while True:
            try:
                envelope, reply, command, started, identity = self._results.get_nowait()
            except queue.Empty:
                return
            self._send(envelope, reply, command, started, identity)

    def _send(
        self,
        envelope: list[bytes],
        reply: bytes,
        command: Any,
        started: float,
        identity: bytes,
        *,
        charge: bool = True,
    ) -> None:
        """Send a reply; with *charge* (a handled request's) through the queued-bytes budget."""
        self.requests_served += 1
        self._sender.send(envelope, reply, command, started, identity, charge=charge)

    def bridge_statistics(self) -> dict[str, Any]:
        """What the bridge adds to ``get_session_statistics``.

        ``connections`` (per-connection details, client ids included) is shown
        to operators only; routing identities appear only as a fingerprint.
        """
        return housekeeping.bridge_statistics(
            now=self.clock.now(),
            tracker=self.tracker,
            pending=0 if self._executor is None else self._executor.pending,
            requests_served=self.requests_served,
            started_at=self.started_at,
            upstream=self.upstream is not None,
            budget=self.budget,
            notifier=self.notifier,
        )

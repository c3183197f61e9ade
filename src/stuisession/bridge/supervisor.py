"""Several worker processes behind one ROUTER socket (``stuisession serve --workers N``).

One Python process answers requests on one core at a time (the GIL); the
supervisor runs *N* worker processes, each a complete
:class:`~stuisession.bridge.server.BridgeServer` with its own
:class:`~stuisession.protocol.handler.ProtocolHandler` on the same store (the
file store is multi-process safe; a Redis store is shared by design).

Topology. The parent owns the public ROUTER socket (so anything that must run
where the frontend lives, such as ZAP authentication, runs in the parent) and
one DEALER per worker, connected to the worker's private ROUTER on an ``ipc://``
endpoint in a 0700 directory. With CURVE (*curve*), the handshake and the
allow-list live in the parent only: for each message the parent looks up the
connection's authenticated key (its ZAP ``User-Id``) in the allow-list, as a
single bridge does, and sends the resulting caller (key, bound client ids,
operator flag) to the worker in a frame of its own in front of the envelope
(:func:`caller_frame`); a key revoked by a reload is bound to nothing from its
next message on. A client's small requests go to the worker chosen by a hash of
whose reply cache answers its resends (its CURVE key, else its ``resend_key``,
else its routing identity), and a connection's requests follow the ones it has in
flight, so:

- per-session order holds for REQ clients (one request in flight, answered
  before the next is sent) and for any client using one connection;
- the reply cache (dedup) of that worker sees every resend of the caller, also
  on a new connection when it has a CURVE key or a ``resend_key``. A client
  without either that reconnects with a new routing identity may reach another
  worker: that resend is handled again, as after a bridge restart (revision
  checks and the durable per-session dedup apply);
- the queued-bytes bounds (``Policy.max_queued_bytes_per_connection`` and
  ``max_queued_bytes``) apply in the parent, where replies wait for a slow
  reader: a connection over its bound is dropped there (its later requests get
  ``Busy`` from the parent), as in a single bridge;
- connection tracking stays per worker and exact; ``get_session_statistics``
  adds up every worker's bridge figures, which each worker publishes into the
  private directory twice a second (the other workers' figures are at most
  about 0.5 s old).

Change notices (``--notify``). The parent owns the notice socket too (an XPUB,
:class:`~stuisession.bridge.notify.Notifier`, made by *notifier_factory* on the
parent's context, so CURVE subscribers meet the same ZAP handler) and verifies
subscriptions there. A store whose changes reach every process by themselves (Redis
Pub/Sub) feeds the parent's notifier directly; for any other store
(*forward_notices*: the file store), each worker sends the change events of its
writes to the parent on a private ``ipc://`` PUSH socket, and the parent posts them
to its notifier. Notices stay hints: one a full queue or a dying worker drops is not
resent, and subscribers resync from the revisions they hold.

Large requests (over :data:`~stuisession.bridge.pacing.LARGE_BYTES`) go to one
more process, the **large lane** (index *N*), so that parsing them never
holds the GIL that small requests wait for (issue 17, ``tests/adversarial``:
``json`` decodes and encodes a whole message in one C call). Order per
connection still holds: while a connection has requests in flight on one
process, its next requests follow them there, whatever their size; a request
goes by its size only when its connection has none in flight. The lane holds
the whole of the policy's large-request budget (``bridge/pacing.py``); each of
the *N* workers holds 1/N of it, for the large requests that follow small ones.

Failure. A worker that dies (SIGKILL, crash) is restarted on the same endpoint;
requests it had accepted but not answered get no reply and the client's
timeout-and-resend (lazy pirate, as for a bridge restart) covers them: nothing
acknowledged is lost, since a reply is only sent after the durable write.
Workers exit when the parent disappears. SIGTERM/SIGINT to the parent stop
reading new requests, let every worker drain (finish and answer what it
accepted), and return.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import re
import shutil
import signal
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

import attrs

from stuisession.bridge.budget import QueueBudget, send_tracked
from stuisession.bridge.curve import CurveConfig, caller_frame
from stuisession.bridge.pacing import LARGE_BYTES
from stuisession.bridge.replies import error_for, error_reply, peek_fields
from stuisession.errors import Busy, StuiSessionError
from stuisession.policy import Policy
from stuisession.stores.base import ChangeEvent

log = logging.getLogger("stuisession.server")

#: routing identity of the parent's DEALER sockets, as the workers' ROUTERs see it
BROKER_ID = b"stuisession-broker"
#: seconds between two publications of a worker's bridge statistics
STATS_INTERVAL = 0.5
#: a worker restarted sooner than this after its last start waits the rest
RESTART_DELAY = 0.5
#: seconds the parent waits for workers to drain on stop before killing them
DRAIN_TIMEOUT = 30.0
#: frontend messages moved per wake-up before the backends get a turn
BATCH = 256
#: the scheduling niceness of the large-request lane (the lowest priority)
LANE_NICE = 19
#: the parent's published queue figures (the public socket's budget)
BROKER_STATS = "stats-broker.json"


@attrs.frozen
class WorkerConfig:
    """What one worker process is told (picklable: it crosses a ``spawn``)."""

    index: int
    #: the worker's private ROUTER endpoint (``ipc://...``)
    endpoint: str
    #: where workers publish their bridge statistics
    stats_dir: str
    #: the parent's start time (``time.time()``), for the uptime figure
    started_at: float
    #: only one worker runs the periodic expiry sweep (the others would repeat it)
    sweeper: bool
    parent_pid: int
    #: this worker's part of the policy's large-request budget (``bridge/pacing.py``)
    pace_share: float = 1.0
    #: this process is the large-request lane (it runs at :data:`LANE_NICE`)
    lane: bool = False
    #: where this worker sends the change events of its writes (None: it does not)
    notices: str | None = None
    #: the parent serves CURVE: each message starts with its caller frame, and the
    #: worker's BridgeServer must be built with ``forwarded_callers=True``
    forwarded_callers: bool = False


#: builds one worker's server: ``factory(config, zmq_context) -> (server, cleanup)``;
#: the server must be a BridgeServer bound to ``config.endpoint`` on that context
#: (which strips the broker's frame), *cleanup* closes what the factory opened
WorkerFactory = Callable[[WorkerConfig, Any], tuple[Any, Callable[[], None]]]


def default_workers() -> int:
    """The default number of worker processes: the usable cores (at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


#: a ``resend_key`` parameter as ``_dedup_scope`` accepts it (16-128 characters); a
#: key with JSON escapes is not matched (its requests go by connection, as before)
_RESEND_KEY = re.compile(rb'"resend_key"\s*:\s*"([^"\\]{16,128})"')


def _resend_key(body: Any) -> bytes | None:
    """The ``resend_key`` of a small request body (a :class:`zmq.Frame`), or None.

    A byte search of its first :data:`LARGE_BYTES`, not a parse: the parent must
    stay cheap. Only routing depends on it; a body that mentions ``resend_key``
    elsewhere is at worst routed like another caller's, and answered correctly.
    """
    if len(body) > LARGE_BYTES:
        return None  # large: to the lane anyway
    found = _RESEND_KEY.search(body.buffer)
    return None if found is None else found.group(1)


class Supervisor:
    """The parent of ``serve --workers N``: the public socket, the workers, restarts.

    :param bind: the public ZeroMQ endpoint (a ROUTER, as for a single bridge).
    :param workers: worker processes (at least 1); one more is started for large
        requests (the lane).
    :param factory: a picklable :data:`WorkerFactory` (a module-level function
        or a :func:`functools.partial` of one): it runs in each worker.
    :param policy: socket limits for the public socket (``max_message_size``,
        ``socket_hwm``), as :class:`~stuisession.bridge.server.BridgeServer` sets them.
    :param curve: serve CurveZMQ on the public socket (ZAP runs in this process);
        each worker is then told ``WorkerConfig.forwarded_callers`` and must build
        its BridgeServer with ``forwarded_callers=True``.
    :param notifier_factory: makes the change-notice publisher in this process:
        ``notifier_factory(zmq_context) -> Notifier`` (None: no notices).
    :param forward_notices: the workers send their writes' change events here for
        the notifier (for stores whose changes do not reach other processes).

    Raises :class:`zmq.ZMQError` when *bind* can not be bound.
    """

    def __init__(
        self,
        bind: str,
        workers: int,
        factory: WorkerFactory,
        *,
        policy: Policy,
        idle_timeout: float = 60.0,
        logger: logging.Logger | None = None,
        curve: CurveConfig | None = None,
        notifier_factory: Callable[[Any], Any] | None = None,
        forward_notices: bool = False,
    ) -> None:
        import zmq

        if workers < 1:
            raise ValueError("workers must be at least 1")
        self._zmq = zmq
        #: workers for requests by connection; one more process is the large lane
        self.n = workers
        self.lane = workers
        total = workers + 1
        #: identity -> (process index, requests in flight there, last forward time)
        self._inflight: dict[bytes, tuple[int, int, float]] = {}
        self._idle_timeout = idle_timeout
        self.factory = factory
        self.log = logger if logger is not None else log
        self.started_at = time.time()
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._dir = tempfile.mkdtemp(prefix="stuisession-workers-")  # 0700
        with open(os.path.join(self._dir, "workers"), "w", encoding="ascii") as f:
            f.write(str(total))  # how many statistics files a worker adds up
        self._ctx = zmq.Context()
        self._procs: list[Any] = [None] * total
        self._started: list[float] = [0.0] * total
        self.restarts = 0
        self._mp = multiprocessing.get_context("spawn")  # no fork of a zmq context
        # replies wait for a slow reader here, in the process owning the public socket:
        # the per-connection and total bounds (bridge/budget.py) apply here, as in a
        # single bridge (a connection over its bound is dropped)
        self.budget = QueueBudget(
            policy.max_queued_bytes_per_connection, policy.max_queued_bytes, idle_timeout
        )
        self._next_publish = 0.0
        self.frontend: Any = None
        self._backends: list[Any] = []
        self.curve = curve
        self._authenticator: Any = None
        #: the change-notice publisher (``--notify``), or None
        self.notifier: Any = None
        self._notices: Any = None
        try:
            fe = self.frontend = self._ctx.socket(zmq.ROUTER)
            if curve is not None:
                self._authenticator = curve.start_authenticator(self._ctx)
                curve.apply(fe)
            fe.setsockopt(zmq.LINGER, 500)
            fe.setsockopt(zmq.MAXMSGSIZE, 2 * policy.max_message_size + 65536)
            fe.setsockopt(zmq.SNDHWM, policy.socket_hwm)
            fe.setsockopt(zmq.RCVHWM, policy.socket_hwm)
            fe.setsockopt(zmq.ROUTER_HANDOVER, 1)
            if "[" in bind:
                fe.setsockopt(zmq.IPV6, 1)
            fe.bind(bind)
            self.bound_endpoint: str = fe.getsockopt_string(zmq.LAST_ENDPOINT)
            for i in range(total):
                be = self._ctx.socket(zmq.DEALER)
                be.setsockopt(zmq.IDENTITY, BROKER_ID)
                be.setsockopt(zmq.LINGER, 0)
                be.setsockopt(zmq.SNDHWM, 4 * policy.socket_hwm)
                be.setsockopt(zmq.RCVHWM, 4 * policy.socket_hwm)
                be.connect(self.endpoint(i))
                self._backends.append(be)
            if notifier_factory is not None:
                self.notifier = notifier_factory(self._ctx)
                if forward_notices:
                    pull = self._notices = self._ctx.socket(zmq.PULL)
                    pull.setsockopt(zmq.LINGER, 0)
                    pull.setsockopt(zmq.RCVHWM, 100_000)
                    pull.setsockopt(zmq.MAXMSGSIZE, 4096)  # a change event is small
                    pull.bind(self.notices_endpoint)
        except BaseException:
            self.close()
            raise

    def endpoint(self, index: int) -> str:
        """The private endpoint of worker *index*."""
        return f"ipc://{self._dir}/worker-{index}"

    @property
    def notices_endpoint(self) -> str:
        """The private endpoint the workers send their change events to."""
        return f"ipc://{self._dir}/notices"

    @property
    def pids(self) -> list[int | None]:
        """The worker processes' ids (None: not running)."""
        return [p.pid if p is not None and p.is_alive() else None for p in self._procs]

    # -- workers ------------------------------------------------------------------------
    def _spawn(self, index: int) -> None:
        config = WorkerConfig(
            index=index,
            endpoint=self.endpoint(index),
            stats_dir=self._dir,
            started_at=self.started_at,
            sweeper=index == 0,
            parent_pid=os.getpid(),
            pace_share=1.0 if index == self.lane else 1.0 / self.n,
            lane=index == self.lane,
            notices=None if self._notices is None else self.notices_endpoint,
            forwarded_callers=self.curve is not None,
        )
        proc = self._mp.Process(
            target=worker_main,
            args=(self.factory, config),
            name=f"stuisession-worker-{index}",
        )
        proc.start()
        self._procs[index] = proc
        self._started[index] = time.monotonic()
        self.log.info("worker %d started (pid %d)", index, proc.pid)

    def _check_workers(self) -> None:
        for i, proc in enumerate(self._procs):
            if proc is None or proc.is_alive():
                continue
            code = proc.exitcode
            proc.join(0)
            self._procs[i] = None
            # what it had in flight gets no reply: its connections may go anywhere now
            self._inflight = {k: v for k, v in self._inflight.items() if v[0] != i}
            with contextlib.suppress(FileNotFoundError):
                os.unlink(_stats_path(self._dir, i))  # its connections are gone with it
            self.log.warning("worker %d (pid %d) exited with %s; restarting", i, proc.pid, code)
            wait = RESTART_DELAY - (time.monotonic() - self._started[i])
            if wait > 0:
                time.sleep(wait)  # a worker that dies at once must not spin the parent
            self.restarts += 1
            self._spawn(i)

    # -- serving ------------------------------------------------------------------------
    def serve_forever(self) -> None:
        """Start the workers and move messages until :meth:`stop`; then drain and return."""
        zmq = self._zmq
        for i in range(len(self._procs)):
            self._spawn(i)
        poller = zmq.Poller()
        poller.register(self.frontend, zmq.POLLIN)
        for be in self._backends:
            poller.register(be, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        if self._notices is not None:
            poller.register(self._notices, zmq.POLLIN)
        next_check = time.monotonic() + 0.2
        while not self._stopping.is_set():
            events = dict(poller.poll(200))
            if self._wake_r in events:
                self._drain_wake()
            if self._notices is not None and self._notices in events:
                self._post_notices()
            for be in self._backends:
                if be in events:
                    self._to_clients(be)
            if self.frontend in events and not self._stopping.is_set():
                self._to_workers()
            self.budget.refresh()
            if time.monotonic() >= next_check:
                self._check_workers()
                self._forget_stale()
                self.budget.sweep()
                self._publish()
                next_check = time.monotonic() + 0.2
        self._drain(poller)

    def _to_workers(self) -> None:
        zmq = self._zmq
        for _ in range(BATCH):
            try:
                frames = self.frontend.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            ident = frames[0].bytes
            try:
                self.budget.admit(ident.hex(), 0)  # dropped, or the total is full
            except Busy as exc:
                self._refuse(frames, exc)
                continue
            last = frames[-1]
            forwarded: list[Any] = frames
            if self.curve is not None:
                caller = self.curve.message_caller(last)
                forwarded = [caller_frame(caller), *frames]
                index = self._route(ident, len(last), caller.key.encode())
            else:
                index = self._route(ident, len(last), _resend_key(last))
            try:
                self._backends[index].send_multipart(forwarded, zmq.NOBLOCK, copy=False)
            except zmq.Again:
                self._refuse(frames, None)
            else:
                _, count, _ = self._inflight.get(ident, (index, 0, 0.0))
                self._inflight[ident] = (index, count + 1, time.monotonic())

    def _post_notices(self) -> int:
        """Hand up to :data:`BATCH` of the workers' change events to the notifier.

        Returns how many were read (malformed ones are read and dropped).
        """
        zmq = self._zmq
        for n in range(BATCH):
            try:
                data = self._notices.recv(zmq.NOBLOCK)
            except zmq.Again:
                return n
            event = ChangeEvent.from_json(data)
            if event is not None:
                self.notifier.post(event)
        return BATCH

    def _route(self, ident: bytes, size: int, scope: bytes | None = None) -> int:
        """The process for a request of *size* bytes from connection *ident*.

        Behind the requests it has in flight, if any (so its order holds); else a
        large request to the lane, a small one to the worker of its *scope*: a hash
        of whose reply cache answers its resends (``_dedup_scope`` in
        ``protocol/handler.py``): the CURVE key, else the ``resend_key``, else the
        connection. So a resend on a new connection meets the same reply cache, as
        in one process.
        """
        held = self._inflight.get(ident)
        if held is not None:
            return held[0]
        if size > LARGE_BYTES:
            return self.lane
        return zlib.crc32(scope or ident) % self.n

    def _answered(self, ident: bytes) -> None:
        """A reply to *ident* left a worker: one request fewer in flight."""
        held = self._inflight.get(ident)
        if held is None:
            return
        index, count, at = held
        if count <= 1:
            del self._inflight[ident]
        else:
            self._inflight[ident] = (index, count - 1, at)

    def _forget_stale(self) -> None:
        """Drop in-flight counts not moved for ``idle_timeout``: requests a worker
        skipped unanswered (a dropped connection's) must not pin it for ever."""
        cutoff = time.monotonic() - self._idle_timeout
        stale = [k for k, (_, _, at) in self._inflight.items() if at < cutoff]
        for k in stale:
            del self._inflight[k]

    def _refuse(self, frames: list[Any], exc: StuiSessionError | None) -> None:
        """Answer a request with ``Busy`` (*exc*, or: the worker's queue is full)."""
        zmq = self._zmq
        envelope = [f.bytes for f in frames[:-1]]
        if not envelope:
            return
        if exc is None:
            reply = error_reply("The bridge is busy; retry later", Busy)
        else:
            reply = error_for(peek_fields(frames[-1].bytes, ("id",)).get("id"), exc)
        with contextlib.suppress(zmq.ZMQError):
            self.frontend.send_multipart([*envelope, reply], zmq.NOBLOCK)

    def _to_clients(self, backend: Any) -> None:
        zmq = self._zmq
        for _ in range(BATCH):
            try:
                frames = backend.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            envelope = [f.bytes for f in frames[:-1]]
            body = frames[-1].bytes
            if envelope:
                self._answered(envelope[0])
            ident = envelope[0].hex() if envelope else ""
            # over the connection's or the total bound: a small Busy instead, sent
            # uncharged; an accepted reply stays charged until libzmq wrote it out
            refusal = self.budget.reply(ident, len(body))
            tracker = None
            # a ROUTER drops a reply to a peer that is gone or whose queue is full
            with contextlib.suppress(zmq.ZMQError):
                if refusal is not None:
                    request_id = peek_fields(body, ("id",)).get("id")
                    self.frontend.send_multipart(
                        [*envelope, error_for(request_id, refusal)], zmq.NOBLOCK
                    )
                else:
                    tracker = send_tracked(self.frontend, zmq, [*envelope, body])
            if refusal is None:
                self.budget.sent(ident, len(body), tracker)

    def _drain(self, poller: Any) -> None:
        """Ask every worker to finish what it accepted, pass its replies on, wait for it."""
        for proc in self._procs:
            if proc is not None and proc.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while any(p is not None and p.is_alive() for p in self._procs):
            if time.monotonic() > deadline:
                self.log.warning("workers did not drain within %.0f s: killing them", DRAIN_TIMEOUT)
                for p in self._procs:
                    if p is not None and p.is_alive():
                        p.kill()
                break
            events = dict(poller.poll(50))
            for be in self._backends:
                if be in events:
                    self._to_clients(be)
            if self._notices is not None and self._notices in events:
                self._post_notices()  # the notices of what the workers finish
        for be in self._backends:  # replies sent after the last poll
            self._to_clients(be)
        if self._notices is not None:
            while self._post_notices() == BATCH:  # all that arrived before the end
                pass
        for p in self._procs:
            if p is not None:
                p.join(5)

    def _publish(self) -> None:
        """Publish the public socket's queue figures for the workers' statistics."""
        if time.monotonic() < self._next_publish:
            return
        self._next_publish = time.monotonic() + STATS_INTERVAL
        path = os.path.join(self._dir, BROKER_STATS)
        try:
            with open(path + ".tmp", "w", encoding="utf-8") as f:
                figures: dict[str, Any] = {"queues": self.budget.statistics()}
                if self.notifier is not None:
                    figures["notifications"] = self.notifier.statistics()
                json.dump(figures, f)
            os.replace(path + ".tmp", path)
        except OSError:  # pragma: no cover - best effort
            self.log.debug("could not publish queue statistics", exc_info=True)

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_r, 4096)

    def stop(self) -> None:
        """Ask :meth:`serve_forever` to drain and return (safe from a signal handler)."""
        self._stopping.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def close(self) -> None:
        """Close the sockets and the private directory (after :meth:`serve_forever`)."""
        for p in self._procs:
            if p is not None and p.is_alive():  # pragma: no cover - serve_forever drains
                p.kill()
                p.join(5)
        if self.notifier is not None:
            self.notifier.close()
        for sock in (self.frontend, *self._backends, self._notices):
            if sock is not None:
                sock.close(linger=500 if sock is self.frontend else 0)
        if self._authenticator is not None:
            self._authenticator.stop()
        self._ctx.term()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the worker process -------------------------------------------------------------------
def _broker_context() -> Any:
    """A zmq Context whose ROUTER sockets hide the broker's frame.

    Behind the parent's DEALER, a worker's ROUTER receives ``[BROKER_ID, client
    identity, ...]``; dropping the first frame on receipt and adding it in front
    of each reply makes the worker's BridgeServer see exactly what it sees when it
    owns the public socket (connection tracking by the client's identity).
    """
    import zmq

    class BehindBroker(zmq.Socket):  # type: ignore[type-arg]
        _message_start = True

        def recv_multipart(self, flags: int = 0, copy: bool = True, track: bool = False) -> Any:
            frames = super().recv_multipart(flags, copy=copy, track=track)
            if self.type == zmq.ROUTER:
                return frames[1:]
            return frames

        def send(  # type: ignore[override]
            self, data: Any, flags: int = 0, copy: bool = True, track: bool = False, **kw: Any
        ) -> Any:
            if self.type == zmq.ROUTER and self._message_start:
                super().send(BROKER_ID, zmq.SNDMORE | (flags & zmq.NOBLOCK))
            self._message_start = not flags & zmq.SNDMORE
            return super().send(data, flags, copy=copy, track=track, **kw)

    class BrokerContext(zmq.Context):  # type: ignore[type-arg]
        _socket_class = BehindBroker

    return BrokerContext()


def _stats_path(directory: str, index: int) -> str:
    return os.path.join(directory, f"stats-{index}.json")


def merge_statistics(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Add up bridge statistics: numbers summed, lists joined, flags or'ed, maps merged."""
    out: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if key not in out:
                out[key] = value
            else:
                out[key] = _merge(out[key], value, key)
    return out


def _merge(a: Any, b: Any, key: str = "") -> Any:
    if key.startswith("max_"):  # a configured bound: the same everywhere, never a sum
        return max(a, b) if type(a) is type(b) and isinstance(a, (int, float)) else a
    if isinstance(a, bool) or isinstance(b, bool):
        return bool(a) or bool(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a + b
    if isinstance(a, list) and isinstance(b, list):
        return a + b
    if isinstance(a, dict) and isinstance(b, dict):
        return merge_statistics([a, b])
    return a


class _SharedStatistics:
    """Publishes this worker's bridge statistics and answers with everyone's sum."""

    def __init__(self, server: Any, config: WorkerConfig) -> None:
        self._server = server
        self._config = config
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stuisession-stats", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)

    def _run(self) -> None:
        path = _stats_path(self._config.stats_dir, self._config.index)
        tmp = path + ".tmp"
        while not self._stop.wait(STATS_INTERVAL):
            try:
                with open(tmp, "w", encoding="utf-8") as f:
                    json.dump(self._server.bridge_statistics(), f)
                os.replace(tmp, path)
            except (OSError, TypeError, ValueError):  # pragma: no cover - best effort
                log.debug("could not publish worker statistics", exc_info=True)

    def aggregate(self) -> dict[str, Any]:
        parts = [self._server.bridge_statistics()]
        paths = [
            _stats_path(self._config.stats_dir, i)
            for i in range(_worker_count(self._config.stats_dir))
            if i != self._config.index
        ]
        # the public socket's queue (replies waiting for slow readers) is the parent's
        paths.append(os.path.join(self._config.stats_dir, BROKER_STATS))
        for path in paths:
            try:
                with open(path, encoding="utf-8") as f:
                    parts.append(json.load(f))
            except (OSError, ValueError):
                continue  # not published yet, or restarting
        merged = merge_statistics(parts)
        merged["uptime"] = int(time.time() - self._config.started_at)
        merged["workers"] = _worker_count(self._config.stats_dir)
        return merged


def _worker_count(directory: str) -> int:
    try:
        with open(os.path.join(directory, "workers"), encoding="ascii") as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def _forward_notices(server: Any, config: WorkerConfig, context: Any) -> Callable[[], None] | None:
    """Send the change events of this worker's writes to the parent; returns the closer.

    The listener runs on the writer's thread; one lock serializes the socket (ZeroMQ
    sockets are not thread-safe). A full queue drops the notice: notices are hints.
    """
    if config.notices is None:
        return None
    import zmq

    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 500)  # the last notices get a moment to leave
    push.setsockopt(zmq.SNDHWM, 100_000)
    push.connect(config.notices)
    lock = threading.Lock()
    store = server.handler.service.store

    def forward(event: ChangeEvent) -> None:
        data = event.to_json()
        with lock, contextlib.suppress(zmq.ZMQError):
            push.send(data, zmq.NOBLOCK)

    store.add_change_listener(forward)

    def close() -> None:
        store.remove_change_listener(forward)
        with lock:
            push.close()

    return close


def worker_main(factory: WorkerFactory, config: WorkerConfig) -> None:
    """The body of one worker process (the target of the ``spawn``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; SIGTERM drains
    if hasattr(signal, "SIGHUP"):  # the parent re-reads the allow-list; a worker has none
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if config.lane:
        # the lane's CPU-bound parses yield the cores to the processes serving small
        # requests the moment one wakes (issue 17: the sub-1 MiB attack's p99 ratio
        # was 3.0-3.4x at nice 0, 1.9-2.4x here); at nice 19 it still gets about 1.5%
        # of a core against busy ones, so a lock it holds is never held for ever
        with contextlib.suppress(OSError):
            os.nice(LANE_NICE)
    context = _broker_context()
    server, cleanup = factory(config, context)
    forward = _forward_notices(server, config, context)
    shared = _SharedStatistics(server, config)
    server.handler.extra_statistics = shared.aggregate

    stop = threading.Event()

    def orphaned() -> None:
        # the parent died (SIGKILL): stop, so no worker outlives its bridge
        while not stop.wait(0.2):
            if os.getppid() != config.parent_pid:
                server.stop()
                return

    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    watchdog = threading.Thread(target=orphaned, name="stuisession-orphan", daemon=True)
    watchdog.start()
    shared.start()
    try:
        with server:
            server.serve_forever()
    finally:
        stop.set()
        shared.stop()
        if forward is not None:
            forward()
        cleanup()
        context.term()

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

Requests are handled one at a time in the serving thread; the expiry sweep
runs in the same thread between requests, every ``sweep_interval`` seconds.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from . import jsonutil
from .clock import isoformat

if TYPE_CHECKING:
    from .protocol import ProtocolHandler

__all__ = ["BridgeServer"]

log = logging.getLogger("stuisession.server")

#: a message with more frames than this is refused without echoing its envelope
MAX_FRAMES = 32
#: the longest wait in one poll: a lost wake-up is still noticed this quickly (seconds)
MAX_POLL_WAIT = 1.0
#: messages handled per poll wake-up before stop/sweep deadlines are checked again
BATCH = 64
#: only this much of a message is read to find ``command`` etc. for the request log
PEEK_BYTES = 64 * 1024


def _zmq() -> Any:
    try:
        import zmq
    except ImportError as exc:
        raise ImportError("the ZeroMQ bridge needs pyzmq: pip install 'stuisession[zmq]'") from exc
    return zmq


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
    """

    def __init__(
        self,
        handler: ProtocolHandler,
        bind: str = "tcp://127.0.0.1:5555",
        *,
        context: Any = None,
        sweep_interval: float | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        zmq = _zmq()
        self._zmq = zmq
        self.handler = handler
        self.log = logger if logger is not None else log
        interval = handler.policy.cleanup_interval if sweep_interval is None else sweep_interval
        if not interval > 0:
            raise ValueError(f"sweep_interval must be positive, got {interval!r}")
        self.sweep_interval = float(interval)
        self._own_context = context is None
        self._context = zmq.Context() if context is None else context
        self._stopping = threading.Event()
        self._idle = threading.Event()  # set while serve_forever is not running
        self._idle.set()
        self._closed = False
        self._wake_endpoint = f"inproc://stuisession-bridge-wake-{id(self):x}-{time.monotonic_ns()}"
        self._socket: Any = None
        self._wake: Any = None
        try:
            sock = self._socket = self._context.socket(zmq.ROUTER)
            # replies still queued at shutdown get a moment to leave, not forever
            sock.setsockopt(zmq.LINGER, 500)
            # a peer sending far more than the handler accepts is cut off instead of
            # buffered; up to this size it gets a structured MessageTooLarge reply
            sock.setsockopt(zmq.MAXMSGSIZE, 2 * handler.policy.max_message_size + 65536)
            if "[" in bind:
                sock.setsockopt(zmq.IPV6, 1)
            sock.bind(bind)
            self.bound_endpoint: str = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            self._wake = self._context.socket(zmq.PULL)
            self._wake.setsockopt(zmq.LINGER, 0)
            self._wake.bind(self._wake_endpoint)
        except BaseException:
            self._close_sockets()
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
        try:
            poller = zmq.Poller()
            poller.register(self._socket, zmq.POLLIN)
            poller.register(self._wake, zmq.POLLIN)
            next_sweep = time.monotonic() + self.sweep_interval
            self.log.debug("serving on %s", self.bound_endpoint)
            while not self._stopping.is_set():
                wait = min(max(next_sweep - time.monotonic(), 0.0), MAX_POLL_WAIT)
                events = dict(poller.poll(int(wait * 1000)))
                if self._wake in events:
                    self._drain(self._wake)
                if self._socket in events:
                    for _ in range(BATCH):
                        if self._stopping.is_set():
                            break
                        try:
                            frames = self._socket.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._serve_one(frames)
                if time.monotonic() >= next_sweep and not self._stopping.is_set():
                    self._sweep()
                    next_sweep = time.monotonic() + self.sweep_interval
        finally:
            self._idle.set()

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
        for sock in (self._socket, self._wake):
            if sock is not None:
                sock.close()

    def _drain(self, sock: Any) -> None:
        zmq = self._zmq
        while True:
            try:
                sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return

    def _serve_one(self, frames: list[bytes]) -> None:
        started = time.perf_counter()
        identity = frames[0]
        envelope, body, problem = split_frames(frames)
        command: Any = None
        if problem is not None:
            reply = error_reply(problem)
        else:
            assert body is not None
            try:
                reply = self.handler.handle_wire(body)
            except Exception:
                # handle_wire promises not to raise; a wrapped or buggy handler must
                # still not take the server down
                self.log.exception("handler raised; answering with an internal error")
                reply = error_reply("Internal error while handling the request", "Error")
            command = peek_fields(body, ("command",)).get("command")
        try:
            self._socket.send_multipart([*envelope, reply], self._zmq.NOBLOCK)
        except self._zmq.ZMQError as exc:
            # ROUTER drops replies to vanished peers by itself; anything else is logged
            self.log.warning("could not send a reply to %s: %s", identity.hex(), exc)
        if self.log.isEnabledFor(logging.INFO):
            meta = peek_fields(reply, ("id", "status", "error_type"), _reply_complete)
            self.log.info(
                "request command=%s id=%s status=%s error_type=%s duration_ms=%.1f client=%s",
                _printable(command),
                _printable(meta.get("id")),
                _printable(meta.get("status")),
                _printable(meta.get("error_type")),
                (time.perf_counter() - started) * 1000.0,
                identity.hex(),
            )

    def _sweep(self) -> None:
        started = time.perf_counter()
        try:
            removed = self.handler.cleanup_expired()
        except Exception:
            self.log.exception("expiry sweep failed; retrying at the next interval")
            return
        self.log.debug(
            "expiry sweep removed %s sessions in %.1f ms",
            removed,
            (time.perf_counter() - started) * 1000.0,
        )


# -- framing --------------------------------------------------------------------------
def split_frames(frames: list[bytes]) -> tuple[list[bytes], bytes | None, str | None]:
    """Split a ROUTER message into ``(envelope, body, problem)``.

    *envelope* is what to echo in front of the reply. *problem* is None when
    *body* is the one request frame, else a message for the error reply.
    """
    if len(frames) > MAX_FRAMES:
        # don't echo an arbitrarily long envelope; answer REQ-style if it looks like REQ
        head = frames[:2] if len(frames) > 1 and frames[1] == b"" else frames[:1]
        return head, None, f"Message has {len(frames)} frames; at most {MAX_FRAMES} are accepted"
    delimiter = next((i for i in range(1, len(frames)) if frames[i] == b""), None)
    if delimiter is None:
        # DEALER style: [identity, *routing, body]
        if len(frames) < 2:
            return frames[:1], None, "Message has no body frame"
        return frames[:-1], frames[-1], None
    envelope, payload = frames[: delimiter + 1], frames[delimiter + 1 :]
    if not payload:
        return envelope, None, "Message has no body frame after the empty delimiter frame"
    if len(payload) > 1:
        return (
            envelope,
            None,
            f"Message has {len(payload)} body frames; a request is one JSON frame",
        )
    return envelope, payload[0], None


def error_reply(message: str, error_type: str = "InvalidRequest") -> bytes:
    """An error reply in the flat envelope, for messages the handler never saw."""
    return jsonutil.dumps(
        {
            "id": None,
            "status": "error",
            "error": message,
            "error_type": error_type,
            "timestamp": isoformat(time.time()),
        }
    )


# -- cheap peeking for the request log ---------------------------------------------------
_decoder = json.JSONDecoder()
_WS = re.compile(r"[ \t\n\r]*")
_PLAIN = re.compile(r"[A-Za-z0-9_.:@/+-]{1,64}")


def peek_fields(
    data: bytes,
    names: tuple[str, ...],
    done: Callable[[dict[str, Any]], bool] | None = None,
) -> dict[str, Any]:
    """Top-level members *names* of the JSON object in *data*, read cheaply.

    Reads members in order from the first :data:`PEEK_BYTES` bytes only and
    stops as soon as all *names* (or what *done* says is enough) are found, so
    a large ``parameters`` or ``result`` after them is never decoded. Anything
    unreadable just ends the search: this is for logging, not validation.
    """
    found: dict[str, Any] = {}
    text = data[:PEEK_BYTES].decode("utf-8", "replace")
    try:
        i = _skip_ws(text, 0)
        if text[i : i + 1] != "{":
            return found
        i += 1
        while True:
            i = _skip_ws(text, i)
            if text[i : i + 1] != '"':
                return found
            key, i = _decoder.raw_decode(text, i)
            i = _skip_ws(text, i)
            if text[i : i + 1] != ":":
                return found
            value, i = _decoder.raw_decode(text, _skip_ws(text, i + 1))
            if key in names and key not in found:
                found[key] = value
                if len(found) == len(names) or (done is not None and done(found)):
                    return found
            i = _skip_ws(text, i)
            if text[i : i + 1] != ",":
                return found
            i += 1
    except (ValueError, RecursionError):
        return found


def _skip_ws(text: str, i: int) -> int:
    match = _WS.match(text, i)
    return i if match is None else match.end()


def _reply_complete(found: dict[str, Any]) -> bool:
    # a success reply has no error_type: stop before its (possibly large) result
    return found.get("status") == "success" and "id" in found


def _printable(value: Any) -> str:
    """A log-safe rendering of a client-chosen scalar (no newlines, bounded length)."""
    if value is None:
        return "-"
    text = value if isinstance(value, str) else json.dumps(value)[:64]
    if _PLAIN.fullmatch(text):
        return text
    return repr(text[:64])

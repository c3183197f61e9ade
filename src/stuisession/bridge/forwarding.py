"""Forwarding non-session requests to the Pharo STUIServer, and capture hooks.

The bridge answers session commands itself; anything else (``ping``,
``evaluate``, ``inspect``, v1-envelope requests, ...) goes to the Pharo
image's REP socket unchanged, except that the session id of the calling
connection is added as ``parameters.session_id`` when the request names none
(upstream's flat commands carry their arguments in ``parameters``).

:class:`ZmqUpstream` keeps a small pool of REQ sockets, one per concurrent
call, each with a receive timeout: a slow or dead image yields an
:class:`~stuisession.errors.UpstreamError` after ``timeout`` seconds and never
blocks anything but the calls waiting for it.

Capture hooks turn forwarded traffic into session state, so a client does not
need to send ``update_session_state`` after every evaluation.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from stuisession import _json
from stuisession.errors import UpstreamError
from stuisession.state.updates import StateUpdate


class Upstream(Protocol):
    """Anything that answers one upstream request with one reply."""

    def forward(self, request: Mapping[str, Any]) -> dict[str, Any]: ...

    def close(self) -> None: ...


class ZmqUpstream:
    """The Pharo STUIServer at *endpoint* (REP), reached with pooled REQ sockets.

    :param timeout: seconds to wait for a reply before :class:`UpstreamError`.
    :param pool_size: REQ sockets kept open (calls beyond it open more, briefly).
    """

    def __init__(
        self, endpoint: str, *, timeout: float = 30.0, pool_size: int = 4, context: Any = None
    ) -> None:
        import zmq

        self._zmq = zmq
        self.endpoint = endpoint
        self.timeout = timeout
        self._ctx = context or zmq.Context.instance()
        self._pool: queue.LifoQueue[Any] = queue.LifoQueue(maxsize=pool_size)
        self._closed = False

    def _socket(self) -> Any:
        try:
            return self._pool.get_nowait()
        except queue.Empty:
            zmq = self._zmq
            sock = self._ctx.socket(zmq.REQ)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVTIMEO, int(self.timeout * 1000))
            sock.setsockopt(zmq.SNDTIMEO, int(self.timeout * 1000))
            sock.connect(self.endpoint)
            return sock

    def forward(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """Send *request* to the image and return its reply."""
        try:
            data = json.dumps(request, ensure_ascii=False, allow_nan=False).encode()
        except UnicodeEncodeError:
            # a lone surrogate (from a "\ud800" escape) can't be UTF-8: keep it escaped
            data = json.dumps(request, allow_nan=False).encode()
        sock = self._socket()
        try:
            sock.send(data)
            raw = sock.recv()
        except self._zmq.Again:
            sock.close(linger=0)  # a REQ socket that timed out is unusable
            raise UpstreamError(
                f"Pharo backend did not answer within {self.timeout:g} s",
                timeout=self.timeout,
            ) from None
        except self._zmq.ZMQError as exc:
            sock.close(linger=0)
            raise UpstreamError(f"Pharo backend unreachable: {exc}") from None
        if self._closed:
            sock.close(linger=0)
        else:
            try:
                self._pool.put_nowait(sock)
            except queue.Full:
                sock.close(linger=0)
        try:
            reply = _json.loads(raw)  # strict: NaN/Infinity could not be passed on
        except (ValueError, RecursionError):
            raise UpstreamError("Pharo backend sent a reply that is not JSON") from None
        if not isinstance(reply, dict):
            raise UpstreamError("Pharo backend sent a reply that is not a JSON object")
        return reply

    def close(self) -> None:
        """Close the pooled sockets."""
        self._closed = True
        while True:
            try:
                self._pool.get_nowait().close(linger=0)
            except queue.Empty:
                return


#: a hook sees the forwarded request and the image's reply and may return a state update
CaptureHook = Callable[[Mapping[str, Any], Mapping[str, Any]], StateUpdate | None]


class CaptureHooks:
    """Callbacks by command name, run after a successful forwarded request.

    ``hooks.register("evaluate", fn)``: *fn(request, reply)* returns a
    :class:`~stuisession.updates.StateUpdate` to apply to the caller's session,
    or None. Hooks run on the bridge's worker threads; an exception in a hook
    is logged and does not change the reply the client gets.
    """

    def __init__(self) -> None:
        self._hooks: dict[str, list[CaptureHook]] = {}
        self._lock = threading.Lock()

    def register(self, command: str, hook: CaptureHook) -> CaptureHook:
        """Add *hook* for *command*; returns it (usable as a decorator factory target)."""
        with self._lock:
            self._hooks.setdefault(command, []).append(hook)
        return hook

    def for_command(self, command: str) -> list[CaptureHook]:
        """The hooks registered for *command*."""
        with self._lock:
            return list(self._hooks.get(command, ()))


def capture_evaluation(request: Mapping[str, Any], reply: Mapping[str, Any]) -> StateUpdate | None:
    """The built-in hook for ``evaluate``: append the evaluation to the workspace history.

    Request: flat ``evaluate`` with ``parameters.code`` (and optional
    ``workspace``, ``evaluation_mode``). Reply: ``result`` may carry
    ``result``/``display`` (printed form), ``object_id`` and ``class_name`` of
    the result, ``execution_time`` (ms) and ``has_error``/``error``. When an
    ``object_id`` is given, the object is registered (print string, class) and
    the history entry refers to it.
    """
    params = request.get("parameters") or {}
    code = params.get("code")
    if not isinstance(code, str):
        return None
    result = reply.get("result")
    result = result if isinstance(result, Mapping) else {"result": result}
    workspace = params.get("workspace") if isinstance(params.get("workspace"), str) else "default"
    printed = result.get("display", result.get("result"))
    entry: dict[str, Any] = {"source": code}
    if printed is not None:
        entry["printed"] = str(printed)[:10_000]
    if isinstance(result.get("execution_time"), (int, float)):
        entry["duration_ms"] = float(result["execution_time"])
    if isinstance(params.get("evaluation_mode"), str):
        entry["mode"] = params["evaluation_mode"]
    error = reply.get("error") or (result.get("error") if result.get("has_error") else None)
    if error:
        entry["error"] = str(error)[:10_000]
    patches: dict[str, Any] = {}
    oid = result.get("object_id")
    if isinstance(oid, str):
        record: dict[str, Any] = {"print_string": str(printed or "")[:10_000]}
        if isinstance(result.get("class_name"), str):
            record["class_name"] = result["class_name"]
        patches["objects"] = {oid: record}
        entry["result"] = {"$ref": oid}
    from stuisession.state.updates import structure_evaluations

    return StateUpdate(
        patches=patches,
        append_history=structure_evaluations({workspace: [entry]}, "evaluate"),
        counts_as_update=False,
    )

"""A TEST DOUBLE of the Pharo STUIServer (not a test module, not the real image).

:class:`UpstreamDoubleServer` binds a ZeroMQ REP socket on ``127.0.0.1`` and
answers in a background thread, one request at a time like the image's
``STUIServer``:

- ``ping`` -> ``{"id", "status": "success", "result": {"message": "pong"}}``;
- ``evaluate`` -> ``{"id", "status": "success", "result": {"result": "<printed>",
  "object_id": "obj_N", "class_name": "SmallInteger", "execution_time": 1}}``
  where ``<printed>`` is the value of ``parameters.code`` when it is a sum of
  integers (``"3 + 4"`` -> ``"7"``), else the code itself;
- anything else -> an error reply (``error_type`` ``"Error"``).

Stall mode (``stall=N`` or ``double.stall = N``) sleeps *N* seconds before
each answer; :meth:`UpstreamDoubleServer.close` interrupts a stall at once (and
never answers), :meth:`UpstreamDoubleServer.release` ends it and answers (a gate
for tests that check what happened while the image was silent).
``double.raw_reply = b"..."`` sends those bytes as every reply instead (a
misbehaving image).
Every received request is recorded in :attr:`UpstreamDoubleServer.requests`.
"""

from __future__ import annotations

import itertools
import json
import threading
from typing import Any

import zmq

__all__ = ["UpstreamDoubleServer"]


def _printed(code: Any) -> str:
    if isinstance(code, str):
        try:
            return str(sum(int(part) for part in code.split("+")))
        except ValueError:
            return code
    return repr(code)


class UpstreamDoubleServer:
    """A fake Pharo STUIServer (REP) in a thread: a test double, see the module docstring."""

    def __init__(self, *, stall: float = 0.0, bind: str = "tcp://127.0.0.1:*") -> None:
        self.stall = stall
        self.raw_reply: bytes | None = None
        self.requests: list[dict[str, Any]] = []
        self.answered = 0
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._wake = threading.Event()  # ends a stall: set by close() and release()
        self._objects = itertools.count(1)
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.REP)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind(bind)
        self.endpoint: str = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._thread = threading.Thread(target=self._serve, name="upstream-double", daemon=True)
        self._thread.start()

    # -- observation ------------------------------------------------------------------
    def wait_requests(self, n: int, timeout: float = 10.0) -> bool:
        """Wait until at least *n* requests have arrived."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self.requests) >= n, timeout)

    # -- lifecycle --------------------------------------------------------------------
    def release(self) -> None:
        """End the stall now and from now on: the stalled request is answered."""
        self.stall = 0.0
        self._wake.set()

    def close(self) -> None:
        """Stop answering (interrupting a stall), close the socket and the context."""
        self._stop.set()
        self._wake.set()
        self._thread.join(10)
        if self._thread.is_alive():  # pragma: no cover - only a broken double
            raise RuntimeError("the upstream double did not stop")
        self._sock.close(linger=0)
        self._ctx.term()

    def __enter__(self) -> UpstreamDoubleServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the REP loop -----------------------------------------------------------------
    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(50):
                continue
            raw = self._sock.recv()
            try:
                doc = json.loads(raw)
            except ValueError:
                doc = {"id": None, "command": None, "unparsable": raw.decode(errors="replace")}
            with self._changed:
                self.requests.append(doc)
                self._changed.notify_all()
            if self.stall > 0:
                self._wake.wait(self.stall)
            if self._stop.is_set():
                return  # closed while stalled: never answer
            raw_reply = self.raw_reply
            if raw_reply is not None:
                self._sock.send(raw_reply)
            else:
                self._sock.send(json.dumps(self._answer(doc)).encode())
            with self._changed:
                self.answered += 1
                self._changed.notify_all()

    def _answer(self, doc: Any) -> dict[str, Any]:
        if not isinstance(doc, dict):
            return {"id": None, "status": "error", "error": "not an object", "error_type": "Error"}
        rid = doc.get("id")
        command = doc.get("command")
        params = doc.get("parameters") if isinstance(doc.get("parameters"), dict) else {}
        if command == "ping":
            return {"id": rid, "status": "success", "result": {"message": "pong"}}
        if command == "evaluate":
            return {
                "id": rid,
                "status": "success",
                "result": {
                    "result": _printed(params.get("code")),
                    "object_id": f"obj_{next(self._objects)}",
                    "class_name": "SmallInteger",
                    "execution_time": 1,
                },
            }
        return {
            "id": rid,
            "status": "error",
            "error": f"Unknown command: {command}",
            "error_type": "Error",
        }

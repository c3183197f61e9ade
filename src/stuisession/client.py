"""A reconnecting session client, as the Rust TUI client behaves, for harnesses and tools.

::

    from stuisession.client import SessionClient

    with SessionClient("tcp://127.0.0.1:5555", client_id="harness-1") as client:
        client.open()                       # create, or restore the remembered session
        client.update(state_data={"workspace": "x := 3 + 4."})
        state = client.restore()            # the full state, as restore_session returns it

Every request has a receive timeout. On a timeout the REQ socket (which is
unusable after one) is closed and a new one resends the *same* request with
the *same* id, with exponential backoff; the server's reply cache makes the
resend safe for state-changing commands. When the server answers again after
having been gone, the client restores its session before going on, so the
caller sees one continuous session.
"""

from __future__ import annotations

import itertools
import json
import secrets
import time
from types import TracebackType
from typing import Any

from stuisession.errors import StuiSessionError, UpstreamError


class RequestFailed(StuiSessionError):
    """The server answered with an error; ``error_type`` is the server's."""

    def __init__(self, reply: dict[str, Any]) -> None:
        super().__init__(str(reply.get("error", "error")))
        # any JSON object is accepted as details (a forwarded reply of the image may
        # carry a "message" member, which must not collide with the parameter)
        details = reply.get("details")
        self.details = dict(details) if isinstance(details, dict) else {}
        self.error_type = str(reply.get("error_type", "Error"))
        self.reply = reply


class ServerUnavailable(UpstreamError):
    """No reply from the server after every retry."""

    error_type = "ServerUnavailable"


def _zmq() -> Any:
    try:
        import zmq
    except ImportError as exc:  # pragma: no cover - the zmq extra is a dev dependency
        raise ImportError("SessionClient needs pyzmq: pip install 'stuisession[zmq]'") from exc
    return zmq


class SessionClient:
    """A synchronous client of one session over a ZeroMQ REQ socket.

    :param endpoint: the bridge, e.g. ``tcp://127.0.0.1:5555``.
    :param client_id: this client's id.
    :param session_id: a session to restore on :meth:`open` (e.g. remembered on disk).
    :param timeout: seconds to wait for each reply (upstream default 5 s).
    :param retries: resends after a timeout before giving up (upstream default 3).
    :param backoff: first delay between resends; doubles each time, capped at 5 s.
    :param client_token: the client token (strict mode: proves the client id when
        creating more sessions; kept up to date from create and restore replies).
    :param curve_server_key: the bridge's z85 CURVE public key (40 characters, or
        bytes): connect with CurveZMQ. Needs *curve_secret_key* and *curve_public_key*,
        this client's key pair (see ``stuisession keys curve-client`` and
        :func:`stuisession.bridge.curve.load_keypair`).

    Every request carries this client object's random ``resend_key`` (an
    additive parameter, 128 bits): a resend on a new socket proves it is the
    same caller, so the bridge's reply cache answers it (and nobody else).
    """

    def __init__(
        self,
        endpoint: str,
        client_id: str,
        *,
        session_id: str | None = None,
        resume_token: str | None = None,
        timeout: float = 5.0,
        retries: int = 3,
        backoff: float = 0.2,
        context: Any = None,
        client_token: str | None = None,
        curve_server_key: str | bytes | None = None,
        curve_secret_key: str | bytes | None = None,
        curve_public_key: str | bytes | None = None,
    ) -> None:
        self._zmq = _zmq()
        self.client_token = client_token
        keys = (curve_server_key, curve_secret_key, curve_public_key)
        if any(k is not None for k in keys) and not all(k is not None for k in keys):
            raise ValueError(
                "CURVE needs curve_server_key, curve_secret_key and curve_public_key together"
            )
        self._curve: tuple[bytes, ...] | None = (
            None
            if curve_server_key is None
            else tuple(
                k.encode("ascii") if isinstance(k, str) else bytes(k) for k in keys if k is not None
            )
        )
        #: proves to the bridge's reply cache that a resend comes from this caller
        self._resend_key = secrets.token_urlsafe(16)
        self.endpoint = endpoint
        self.client_id = client_id
        self.session_id = session_id
        self.resume_token = resume_token
        self.revision: int | None = None
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._ctx = context or self._zmq.Context.instance()
        self._socket: Any = None
        self._ids = itertools.count(1)
        self._prefix = secrets.token_hex(4)
        #: times the client restored its session after the server came back
        self.reconnects = 0
        self._lost = False

    # -- plumbing ---------------------------------------------------------------------
    def _connect(self) -> Any:
        if self._socket is None:
            zmq = self._zmq
            sock = self._ctx.socket(zmq.REQ)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVTIMEO, int(self.timeout * 1000))
            sock.setsockopt(zmq.SNDTIMEO, int(self.timeout * 1000))
            if self._curve is not None:
                server, secret, public = self._curve
                sock.setsockopt(zmq.CURVE_SERVERKEY, server)
                sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
                sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
            sock.connect(self.endpoint)
            self._socket = sock
        return self._socket

    def _drop(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def close(self) -> None:
        """Close the socket (the session stays on the server)."""
        self._drop()

    def __enter__(self) -> SessionClient:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def call(self, command: str, **parameters: Any) -> dict[str, Any]:
        """Send one request, resending it on timeouts; return the result or raise.

        Raises :class:`RequestFailed` for an error reply and
        :class:`ServerUnavailable` when every try timed out.
        """
        request = {
            "id": f"{self._prefix}-{next(self._ids)}",
            "command": command,
            "parameters": {**parameters, "resend_key": self._resend_key},
        }
        body = json.dumps(request).encode()
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                sock = self._connect()
                sock.send(body)
                raw = sock.recv()
            except self._zmq.Again:
                # a REQ socket whose receive timed out can not send again
                self._drop()
                self._lost = True
                if attempt == self.retries:
                    break
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            except BaseException:
                # e.g. KeyboardInterrupt while waiting: the REQ socket is left
                # expecting a reply, so the next call needs a fresh one
                self._drop()
                raise
            reply: dict[str, Any] = json.loads(raw)
            if reply.get("status") != "success":
                raise RequestFailed(reply)
            result: dict[str, Any] = reply["result"]
            return result
        raise ServerUnavailable(
            f"no reply from {self.endpoint} after {self.retries + 1} tries", command=command
        )

    def _session_call(self, command: str, **parameters: Any) -> dict[str, Any]:
        if self.session_id is None:
            raise StuiSessionError("no session: call open() first")
        self._ensure_attached()
        params = {"session_id": self.session_id, "client_id": self.client_id, **parameters}
        if self.resume_token is not None:
            params.setdefault("resume_token", self.resume_token)
        result = self.call(command, **params)
        self._reconnected()  # if the server went away during this call and came back
        return result

    def _ensure_attached(self) -> None:
        # after a lost connection, restore first: the server may have restarted
        # (restore() counts the reconnect)
        if self._lost and self.session_id is not None:
            self.restore()

    def _reconnected(self) -> None:
        # a call succeeded after the server had not answered: count it once
        if self._lost:
            self._lost = False
            self.reconnects += 1

    # -- session API --------------------------------------------------------------------
    def open(self) -> dict[str, Any]:
        """Restore the remembered session, or create one if there is none (or it is gone)."""
        if self.session_id is not None:
            try:
                return self.restore()
            except RequestFailed as exc:
                if exc.error_type not in ("SessionNotFound", "AccessDenied"):
                    raise
                self.session_id = None
        params: dict[str, Any] = {"client_id": self.client_id}
        if self.client_token is not None:
            params["client_token"] = self.client_token
        result = self.call("create_session", **params)
        if result.get("client_token"):
            self.client_token = result["client_token"]
        self.session_id = result["session_id"]
        self.resume_token = result.get("resume_token")
        self.revision = result.get("revision")
        self._reconnected()
        return result

    def restore(self, since_revision: int | None = None) -> dict[str, Any]:
        """The session's state (``restore_session``); follows a rotated session id."""
        if self.session_id is None:
            raise StuiSessionError("no session: call open() first")
        params: dict[str, Any] = {"session_id": self.session_id, "client_id": self.client_id}
        if self.resume_token is not None:
            params["resume_token"] = self.resume_token
        if since_revision is not None:
            params["since_revision"] = since_revision
        result = self.call("restore_session", **params)
        self.session_id = result["session_id"]
        if result.get("resume_token"):
            self.resume_token = result["resume_token"]
        if result.get("client_token"):
            self.client_token = result["client_token"]
        self.revision = result.get("revision")
        self._reconnected()  # restored: nothing more to do after a lost connection
        return result

    def update(self, **parameters: Any) -> dict[str, Any]:
        """``update_session_state`` with the given parameters (state_data, changes, ...)."""
        result = self._session_call("update_session_state", **parameters)
        self.revision = result.get("revision")
        return result

    def info(self) -> dict[str, Any]:
        """``get_session_info``."""
        return self._session_call("get_session_info")

    def close_session(self) -> dict[str, Any]:
        """``close_session``; the client forgets the session."""
        result = self._session_call("close_session")
        self.session_id = None
        return result

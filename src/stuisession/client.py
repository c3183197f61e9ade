"""A reconnecting session client, as the Rust TUI client behaves, for harnesses and tools.

::

    from stuisession.client import SessionClient

    with SessionClient("tcp://127.0.0.1:5555", client_id="harness-1", close_on_exit=True) as client:
        client.open()                       # create, or restore the remembered session
        client.update(state_data={"workspace": "x := 3 + 4."})
        state = client.restore()            # the full state, as restore_session returns it
    # close_on_exit=True: leaving the block closed the session too, not only the socket

Every request has a receive timeout. On a timeout the REQ socket (which is
unusable after one) is closed and a new one resends the *same* request with
the *same* id, with exponential backoff; the server's reply cache makes the
resend safe for state-changing commands. When the server answers again after
having been gone, the client restores its session before going on, so the
caller sees one continuous session.

A request is only sent over a completed connection. Until the server has
answered once, no connection within ``connect_timeout`` seconds (default 3)
fails the call at once with :class:`ServerUnavailable` ("is the bridge
running?") instead of riding out every retry; a slow *reply* is waited for
and resent as usual.

``RateLimited`` and ``Busy`` replies are waited out: the request is resent
after the reply's ``details.retry_after`` (``Busy``: a short backoff), for at
most ``max_throttle_wait`` seconds in all (default 30); each wait is logged at
DEBUG on the ``stuisession.client`` logger.
"""

from __future__ import annotations

import itertools
import json
import logging
import secrets
import time
from types import TracebackType
from typing import Any, cast

# re-exported: ``from stuisession.client import SessionWatch`` is the documented path
from stuisession.client_watch import SessionWatch as SessionWatch  # noqa: PLC0414
from stuisession.client_watch import apply_changes as apply_changes  # noqa: PLC0414
from stuisession.errors import StuiSessionError, UpstreamError
from stuisession.replies import (
    CloseSessionResult,
    CreateSessionResult,
    RestoreSessionResult,
    SessionInfoResult,
    UpdateSessionStateResult,
)

log = logging.getLogger("stuisession.client")

#: finer error codes a client waits out and resends (``error_code``, or ``error_type``
#: from a bridge that predates ``error_code``)
THROTTLE_CODES = frozenset({"RateLimited", "Busy"})


class RequestFailed(StuiSessionError):
    """The server answered with an error.

    ``error_type`` is the server's (one of upstream's four, or a finer type from
    an older bridge); ``error_code`` the finer code when the reply has one, else
    ``error_type``; ``details`` the reply's details; ``reply`` the whole reply.
    """

    def __init__(self, reply: dict[str, Any]) -> None:
        super().__init__(str(reply.get("error", "error")))
        # any JSON object is accepted as details (a forwarded reply of the image may
        # carry a "message" member, which must not collide with the parameter)
        details = reply.get("details")
        self.details = dict(details) if isinstance(details, dict) else {}
        self.error_type = str(reply.get("error_type", "Error"))
        self.error_code = str(reply.get("error_code") or self.error_type)
        self.reply = reply


class ServerUnavailable(UpstreamError):
    """No reply from the server after every retry (or within ``connect_timeout`` at first)."""

    error_code = "ServerUnavailable"


def zmq_module() -> Any:
    try:
        import zmq
    except ImportError as exc:  # pragma: no cover - the zmq extra is a dev dependency
        raise ImportError("SessionClient needs pyzmq (the zmq extra): pip install pyzmq") from exc
    return zmq


def req_socket(
    context: Any,
    endpoint: str,
    timeout: float,
    *,
    connect_timeout: float | None = None,
    curve: tuple[bytes, ...] | None = None,
) -> Any:
    """A ZeroMQ REQ socket connected to *endpoint*, the one factory of the package.

    LINGER 0 (closing never blocks on unsent messages) and a receive timeout of
    *timeout* seconds (at least 1 ms), so that a silent peer raises ``zmq.Again``
    instead of blocking. With *connect_timeout*, a message is only handed to a
    completed connection (``IMMEDIATE``) and ``send`` raises ``zmq.Again`` after
    that many seconds without one (nobody listening); otherwise the send timeout
    is *timeout* too. A REQ socket that timed out can not be used again: close it
    and make a new one. *curve*: ``(server_public, client_secret, client_public)``
    z85 keys to connect with CurveZMQ. Raises ``zmq.ZMQError`` for a malformed
    endpoint and ``ImportError`` without pyzmq.
    """
    zmq = zmq_module()
    sock = context.socket(zmq.REQ)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, max(1, int(timeout * 1000)))
        send = timeout if connect_timeout is None else connect_timeout
        sock.setsockopt(zmq.SNDTIMEO, max(1, int(send * 1000)))
        if connect_timeout is not None:
            sock.setsockopt(zmq.IMMEDIATE, 1)
        if curve is not None:
            server, secret, public = curve
            sock.setsockopt(zmq.CURVE_SERVERKEY, server)
            sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
            sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
        sock.connect(endpoint)
    except BaseException:
        sock.close(linger=0)
        raise
    return sock


class SessionClient:
    """A synchronous client of one session over a ZeroMQ REQ socket.

    :param endpoint: the bridge, e.g. ``tcp://127.0.0.1:5555``.
    :param client_id: this client's id.
    :param session_id: a session to restore on :meth:`open` (e.g. remembered on disk).
    :param timeout: seconds to wait for each reply (upstream default 5 s).
    :param retries: resends after a timeout before giving up (upstream default 3); they
        apply once the server has answered (a server restart is ridden through).
    :param backoff: first delay between resends; doubles each time, capped at 5 s.
    :param connect_timeout: seconds to wait for a connection to the bridge before a
        request is sent (default 3). Until the bridge has answered once, no connection
        within it raises :class:`ServerUnavailable` at once (no resends); later it
        counts as a timeout and is resent. ``None``: no separate connect wait (the
        request is queued and ``timeout``/``retries`` apply from the first call).
    :param max_throttle_wait: seconds a call may spend waiting out ``RateLimited`` and
        ``Busy`` replies before raising :class:`RequestFailed` (default 30; 0: never wait).
    :param close_on_exit: leaving the ``with`` block (or :meth:`close`) also closes the
        session on the server (``close_session``), so scripts do not leak sessions.
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
        connect_timeout: float | None = 3.0,
        max_throttle_wait: float = 30.0,
        close_on_exit: bool = False,
        context: Any = None,
        client_token: str | None = None,
        curve_server_key: str | bytes | None = None,
        curve_secret_key: str | bytes | None = None,
        curve_public_key: str | bytes | None = None,
    ) -> None:
        self._zmq = zmq_module()
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
        #: the history ``revision`` belongs to (sent back with ``since_revision``)
        self.lineage: str | None = None
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.connect_timeout = connect_timeout
        self.max_throttle_wait = max_throttle_wait
        self.close_on_exit = close_on_exit
        self._ctx = context or self._zmq.Context.instance()
        self._socket: Any = None
        self._ids = itertools.count(1)
        self._prefix = secrets.token_hex(4)
        #: times the client restored its session after the server came back
        self.reconnects = 0
        self._lost = False
        self._answered = False  # has the server ever replied to this client?

    # -- plumbing ---------------------------------------------------------------------
    def _connect(self) -> Any:
        if self._socket is None:
            # the connect wait only until the bridge has answered once: later a lost
            # bridge shows as a reply timeout, counted and ridden through as before
            wait = None if self._answered else self.connect_timeout
            self._socket = req_socket(
                self._ctx, self.endpoint, self.timeout, connect_timeout=wait, curve=self._curve
            )
        return self._socket

    def _drop(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def close(self) -> None:
        """Close the socket; with ``close_on_exit`` close the open session first.

        Closing the session is best effort: a server that does not answer (or
        an error reply) is logged at WARNING and the socket is closed anyway.
        """
        try:
            if self.close_on_exit and self.session_id is not None:
                try:
                    self.close_session()
                except StuiSessionError as exc:
                    log.warning("could not close session on exit: %s", exc)
        finally:
            self._drop()

    def __enter__(self) -> SessionClient:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def call(self, command: str, **parameters: Any) -> dict[str, Any]:
        """Send one request, resending it on timeouts; return the result or raise.

        Raises :class:`RequestFailed` for an error reply (after waiting out
        ``RateLimited``/``Busy`` for up to ``max_throttle_wait`` s) and
        :class:`ServerUnavailable` when every try timed out.
        """
        request_id = f"{self._prefix}-{next(self._ids)}"
        request = {
            "id": request_id,
            "command": command,
            "parameters": {**parameters, "resend_key": self._resend_key},
        }
        body = json.dumps(request).encode()
        throttle_deadline = time.monotonic() + self.max_throttle_wait
        throttle_delay = 0.05
        while True:
            reply = self._exchange(command, request_id, body)
            if reply.get("status") == "success":
                result: dict[str, Any] = reply["result"]
                return result
            failure = RequestFailed(reply)
            if failure.error_code not in THROTTLE_CODES:
                raise failure
            wait = failure.details.get("retry_after")
            if not isinstance(wait, (int, float)) or isinstance(wait, bool) or wait < 0:
                wait = throttle_delay  # Busy carries no retry_after: a short backoff
                throttle_delay = min(throttle_delay * 2, 1.0)
            remaining = throttle_deadline - time.monotonic()
            if wait > remaining:
                raise failure
            log.debug(
                "%s from %s: waiting %.3f s before resending %s (id %s)",
                failure.error_code,
                self.endpoint,
                wait,
                command,
                request_id,
            )
            time.sleep(wait)

    def _exchange(self, command: str, request_id: str, body: bytes) -> dict[str, Any]:
        """One request/reply, resent on timeouts; the decoded reply."""
        delay = self.backoff
        for attempt in range(self.retries + 1):
            stage = "reply"
            try:
                sock = self._connect()
                stage = "connection"
                sock.send(body)
                stage = "reply"
                raw = sock.recv()
            except self._zmq.Again:
                # a REQ socket that timed out can not send again
                self._drop()
                self._lost = True
                if stage == "connection" and not self._answered:
                    # nobody has ever answered: the bridge is most likely not running
                    message = (
                        f"no connection to {self.endpoint} within {self.connect_timeout:g} s: "
                        "is the bridge running there? (SessionClient connect_timeout)"
                    )
                    log.warning("%s (request %s)", message, request_id)
                    raise ServerUnavailable(message, command=command) from None
                if attempt == self.retries:
                    break
                waited = self.timeout if stage == "reply" else self.connect_timeout
                log.warning(
                    "no %s from %s for %s within %g s (try %d of %d); resending in %g s",
                    stage,
                    self.endpoint,
                    command,
                    waited,
                    attempt + 1,
                    self.retries + 1,
                    delay,
                )
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            except BaseException:
                # e.g. KeyboardInterrupt while waiting: the REQ socket is left
                # expecting a reply, so the next call needs a fresh one
                self._drop()
                raise
            if not self._answered:
                self._answered = True
                if self.connect_timeout is not None:
                    self._drop()  # replaced by a socket without the connect wait
            reply: dict[str, Any] = json.loads(raw)
            return reply
        message = f"no reply from {self.endpoint} after {self.retries + 1} tries"
        log.warning("%s (request %s)", message, request_id)
        raise ServerUnavailable(message, command=command)

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
    def open(self) -> CreateSessionResult | RestoreSessionResult:
        """Restore the remembered session, or create one if there is none (or it is gone)."""
        if self.session_id is not None:
            try:
                return self.restore()
            except RequestFailed as exc:
                # gone, or not ours: start over (AccessDenied may come as a code)
                if not {exc.error_type, exc.error_code} & {"SessionNotFound", "AccessDenied"}:
                    raise
                self.session_id = None
        params: dict[str, Any] = {"client_id": self.client_id}
        if self.client_token is not None:
            params["client_token"] = self.client_token
        result = cast(CreateSessionResult, self.call("create_session", **params))
        if result.get("client_token"):
            self.client_token = result["client_token"]
        self.session_id = result["session_id"]
        self.resume_token = result.get("resume_token")
        self.revision = result.get("revision")
        self.lineage = result.get("lineage")
        self._reconnected()
        return result

    def restore(
        self, since_revision: int | None = None, lineage: str | None = None
    ) -> RestoreSessionResult:
        """The session's state (``restore_session``); follows a rotated session id.

        With *since_revision*, only the changes since then when the server can
        show that revision is on its history (*lineage*, default the one last
        seen); else the full state with ``delta`` false and a ``delta_reason``.
        """
        if self.session_id is None:
            raise StuiSessionError("no session: call open() first")
        params: dict[str, Any] = {"session_id": self.session_id, "client_id": self.client_id}
        if self.resume_token is not None:
            params["resume_token"] = self.resume_token
        if since_revision is not None:
            params["since_revision"] = since_revision
            lineage = lineage if lineage is not None else self.lineage
            if lineage is not None:
                params["lineage"] = lineage
        result = cast(RestoreSessionResult, self.call("restore_session", **params))
        self.session_id = result["session_id"]
        if result.get("resume_token"):
            self.resume_token = result["resume_token"]
        if result.get("client_token"):
            self.client_token = result["client_token"]
        self.revision = result.get("revision")
        self.lineage = result.get("lineage")
        self._reconnected()  # restored: nothing more to do after a lost connection
        return result

    def update(self, **parameters: Any) -> UpdateSessionStateResult:
        """``update_session_state`` with the given parameters (state_data, changes, ...)."""
        result = cast(
            UpdateSessionStateResult, self._session_call("update_session_state", **parameters)
        )
        self.revision = result.get("revision")
        self.lineage = result.get("lineage")
        return result

    def info(self) -> SessionInfoResult:
        """``get_session_info``."""
        return cast(SessionInfoResult, self._session_call("get_session_info"))

    def close_session(self) -> CloseSessionResult:
        """``close_session``; the client forgets the session."""
        result = cast(CloseSessionResult, self._session_call("close_session"))
        self.session_id = None
        return result

    def watch(self, notify_endpoint: str, **options: Any) -> SessionWatch:
        """A :class:`SessionWatch` of this client's session on *notify_endpoint*, started."""
        watch = SessionWatch(self, notify_endpoint, **options)
        watch.start()
        return watch

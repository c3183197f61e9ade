"""Request handling on the bridge's worker threads: session commands go to the protocol
handler, anything else is forwarded to the Pharo image, and the connection tracker learns
which session a connection uses.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import attrs

from stuisession import _json
from stuisession.bridge.intake import admit_forwarded  # [limits hook]
from stuisession.bridge.replies import _peek_result, error_for, peek_fields
from stuisession.errors import StuiSessionError, UpstreamError
from stuisession.ids import is_valid_session_id
from stuisession.security.identity import Caller
from stuisession.service.core import Credentials

if TYPE_CHECKING:
    from stuisession.bridge.server import BridgeServer

#: commands whose successful reply may carry a new session id or token
_ISSUES_CREDENTIALS = frozenset({"create_session", "restore_session", "rotate_credentials"})


@attrs.frozen
class Job:
    """One accepted request: what its worker needs and where its reply goes."""

    envelope: list[bytes]
    #: the request (a zero-copy ``memoryview`` when large: ``bridge/sockets.py``)
    body: bytes | memoryview
    command: Any
    ident: str
    started: float
    identity: bytes
    #: the session the request names (read cheaply; None: none or unreadable)
    session_id: str | None
    resume_token: str | None
    #: who sent it (CURVE key and its bound client ids, or the bare connection)
    caller: Caller = attrs.field(factory=Caller.anonymous)


class RequestRouter:
    """Answers one request for a :class:`~stuisession.bridge.server.BridgeServer`.

    Reads the server's handler, tracker, upstream and hooks at call time (they may be
    replaced while serving).
    """

    def __init__(self, server: BridgeServer) -> None:
        self.server = server

    def track(self, job: Job, command: str, reply: bytes) -> None:
        """Attach the session a successful session command used (or detach a closed one)."""
        if peek_fields(reply, ("status",)).get("status") != "success":
            return  # a refused request (wrong owner, unknown id, ...) attaches nothing
        if command == "close_session":
            if job.session_id is not None:
                self.server.tracker.detach(job.session_id)
            return
        if command in _ISSUES_CREDENTIALS:
            # create, a (possibly rotating) restore, a token rotation: the reply has
            # the session id (new after a rotation) and any newly issued token
            result = _peek_result(reply, ("session_id",))
            sid = result.get("session_id")
            if not is_valid_session_id(sid):
                return
            assert isinstance(sid, str)
            token = job.resume_token
            if command != "restore_session" or sid != job.session_id:
                issued = _peek_result(reply, ("session_id", "resume_token")).get("resume_token")
                token = issued if isinstance(issued, str) else token
            self.server.tracker.attach(job.ident, sid, token, replaces=job.session_id)
        elif job.session_id is not None:
            self.server.tracker.attach(job.ident, job.session_id, job.resume_token)

    def forward(
        self, body: bytes | memoryview, command: Any, ident: str, caller: Caller | None = None
    ) -> bytes:
        """Send a non-session request to the Pharo image (or say there is none)."""
        # [limits hook] size limit, bounded parse and rate limit, as for session commands
        try:
            doc = admit_forwarded(body, self.server.handler.service, ident)
        except StuiSessionError as exc:
            return error_for(exc.request_id, exc)
        if "command" in doc and not isinstance(command, str):
            return self.server.handler.handle_wire(body, caller=caller)
        request_id = doc.get("id")
        if self.server.upstream is None:
            return error_for(
                request_id,
                UpstreamError(
                    "No Pharo backend is configured for this bridge "
                    "(start it with --upstream tcp://HOST:PORT)"
                ),
            )
        params = doc.get("parameters")
        session_id: str | None = None
        if isinstance(params, dict):
            session_id = (
                params.get("session_id") if is_valid_session_id(params.get("session_id")) else None
            )
            if session_id is None:
                session_id = self.server.tracker.session_of(ident)
                if session_id is not None:
                    doc["parameters"] = {**params, "session_id": session_id}
        try:
            reply = self.server.upstream.forward(doc)
        except StuiSessionError as exc:
            return error_for(request_id, exc)
        if session_id is not None and isinstance(command, str):
            self.capture(command, doc, reply, session_id, ident, caller)
        try:
            return _json.dumps(reply)
        except UnicodeEncodeError:
            # a lone surrogate from a "\ud800" escape in the image's reply: keep it escaped
            return json.dumps(reply, separators=(",", ":")).encode()

    def capture(  # noqa: PLR0917 - internal, called from forward only
        self,
        command: str,
        request: dict[str, Any],
        reply: dict[str, Any],
        session_id: str,
        ident: str,
        caller: Caller | None = None,
    ) -> None:
        if reply.get("status", "success") != "success":
            return
        params = request.get("parameters") or {}
        token = params.get("resume_token") if isinstance(params, dict) else None
        if not isinstance(token, str):
            token = None
            if self.server.handler.policy.strict:
                # forwarded requests carry no token: use the one this connection
                # last proved it holds for the session (compat mode needs none)
                token = self.server.tracker.token_of(ident, session_id)
        # the capture acts with the forwarding connection's rights, never more
        creds = Credentials(resume_token=token, caller=caller or Caller.anonymous())
        for hook in self.server.hooks.for_command(command):
            try:
                update = hook(request, reply)
                if update is not None:
                    self.server.handler.service.update(session_id, update, creds)
            except Exception:
                # capture is best effort: the client still gets the image's reply
                self.server.log.warning("capture hook for %s failed", command, exc_info=True)

"""The sans-IO protocol handler: one request in, one response out.

``ProtocolHandler.handle`` accepts bytes, str or a mapping (one request in
upstream STUI's flat envelope ``{"id", "command", "parameters"}``) and returns
the response as a dict; ``handle_wire`` returns it encoded for the wire. Neither
does I/O on sockets and neither ever raises: every bad input becomes a
structured error response.

Command names, parameter names, result fields and the upstream error types
follow ``shared/stui-protocol.md``; extensions are additive and listed in
``docs/protocol.md``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

from stuisession import _json
from stuisession._json import RawJSON
from stuisession.clock import Clock, isoformat
from stuisession.errors import InternalError, StuiSessionError, UnknownCommand
from stuisession.policy import Policy
from stuisession.protocol import commands_context as ctx
from stuisession.protocol import params as val
from stuisession.protocol.commands_context import Result
from stuisession.protocol.dedup import CURRENT_REQUEST, ReplyCache, durable_key, request_key
from stuisession.protocol.envelope import Request, parse_request
from stuisession.protocol.limits import bound_reply  # [limits hook]
from stuisession.protocol.params import Params
from stuisession.protocol.results import error_response, session_record
from stuisession.security.audit import AuditLog
from stuisession.security.identity import CURRENT_CALLER, Caller, fingerprint
from stuisession.service.core import SessionService
from stuisession.state.schema import Metadata
from stuisession.stores.base import SessionStore

log = logging.getLogger("stuisession.protocol")

#: commands whose repeat must not be applied twice (see :mod:`stuisession.dedup`)
MUTATING = frozenset(
    {
        "create_session",
        "update_session_state",
        "close_session",
        "save_context",
        "clear_context",
        "rotate_credentials",
    }
)

__all__ = ["MUTATING", "ProtocolHandler", "Request", "error_response", "session_record"]


class ProtocolHandler:
    """Maps one STUI session request to one response. Never does socket I/O.

    :param store: where sessions live (default: an in-memory store).
    :param policy: limits and timeouts (default: upstream STUI's).
    :param clock: time source (default: the system clock).
    :param audit: an :class:`~stuisession.audit.AuditLog` for security events.
    :param service: a prebuilt :class:`SessionService` (overrides the four above).
    """

    def __init__(
        self,
        store: SessionStore | None = None,
        policy: Policy | None = None,
        *,
        clock: Clock | None = None,
        audit: AuditLog | None = None,
        service: SessionService | None = None,
        dedup_ttl: float | None = 300.0,
    ) -> None:
        if service is None:
            if store is None:
                from stuisession.stores.memory import MemoryStore

                store = MemoryStore()
            service = SessionService(store, policy, clock=clock, audit=audit)
        self.service = service
        #: extra fields for ``get_session_statistics`` (the bridge adds connections)
        self.extra_statistics: Callable[[], dict[str, Any]] | None = None
        #: remembers replies of state-changing requests (None: off)
        self.replies = None if dedup_ttl is None else ReplyCache(ttl=dedup_ttl)
        self._commands: dict[str, Callable[[Params], Result]] = {
            "create_session": self._create_session,
            "restore_session": self._restore_session,
            "update_session_state": self._update_session_state,
            "close_session": self._close_session,
            "get_session_info": self._get_session_info,
            "list_client_sessions": self._list_client_sessions,
            "get_session_statistics": self._get_session_statistics,
            # the tool-scoped contexts (protocol/commands_context.py)
            "save_context": lambda p: ctx.save_context(self.service, p),
            "load_context": lambda p: ctx.load_context(self.service, p),
            "get_context_summary": lambda p: ctx.get_context_summary(self.service, p),
            "clear_context": lambda p: ctx.clear_context(self.service, p),
            "rotate_credentials": self._rotate_credentials,
            "watch_session": self._watch_session,
        }

    @property
    def policy(self) -> Policy:
        """The policy in force."""
        return self.service.policy

    @property
    def store(self) -> SessionStore:
        """The store in use."""
        return self.service.store

    @property
    def commands(self) -> frozenset[str]:
        """The command names this handler serves."""
        return frozenset(self._commands)

    # -- entry points -------------------------------------------------------------------
    def handle(
        self,
        message: bytes | bytearray | memoryview | str | Mapping[str, Any],
        *,
        caller: Caller | None = None,
    ) -> dict[str, Any]:
        """Handle one request; return the response as a plain dict. Never raises.

        *caller* is who the transport says sent it (default: an unauthenticated
        caller; see :class:`~stuisession.security.identity.Caller`).
        """
        reply = self.respond(message, caller=caller)
        try:
            return dict(_json.resolve_raw(reply))
        except Exception:  # pragma: no cover - stored bytes were verified JSON
            log.exception("could not decode a stored state")
            return self._error_reply(
                reply.get("id"), InternalError("Internal error while handling the request")
            )

    def handle_wire(
        self, message: bytes | bytearray | memoryview | str, *, caller: Caller | None = None
    ) -> bytes:
        """Handle one request; return the UTF-8 JSON reply for the wire. Never raises.

        Restores splice the stored state bytes into the reply without decoding them.
        *caller*: as for :meth:`handle`.
        """
        reply = self.respond(message, caller=caller)
        try:
            # [limits hook] a reply over max_reply_bytes is refused, never queued
            return bound_reply(
                _json.dumps_with_raw(reply), reply, self.policy, self.service.clock.now()
            )
        except Exception:  # pragma: no cover - every reply is built from JSON values
            log.exception("could not encode a reply")
            return _json.dumps(
                self._error_reply(None, InternalError("Internal error while handling the request"))
            )

    def respond(
        self,
        message: bytes | bytearray | memoryview | str | Mapping[str, Any],
        *,
        caller: Caller | None = None,
    ) -> dict[str, Any]:
        """Handle one request; the reply may hold :class:`~stuisession.jsonutil.RawJSON` values."""
        token = CURRENT_CALLER.set(caller if caller is not None else Caller.anonymous())
        try:
            return self._respond(message, CURRENT_CALLER.get())
        finally:
            CURRENT_CALLER.reset(token)

    def _respond(
        self, message: bytes | bytearray | memoryview | str | Mapping[str, Any], caller: Caller
    ) -> dict[str, Any]:
        request_id: str | int | None = None
        try:
            request = self.parse(message)
            request_id = request.id
            command = self._commands.get(request.command)
            if command is None:
                shown = val.printable(request.command[:64])
                raise UnknownCommand(f"Unknown command: {shown}", command=shown)
            if request.command in MUTATING:
                # keyed by the caller too: a reply is only ever replayed to its own
                # caller; the same key, kept in the session record, survives a restart
                key = request_key(
                    request.id, request.command, request.parameters, _dedup_scope(request, caller)
                )
                token = CURRENT_REQUEST.set(durable_key(key))
                try:
                    return self._run_once(request, command, message, key)
                finally:
                    CURRENT_REQUEST.reset(token)
            if request.command == "restore_session" and self.policy.rotates_on_restore:
                key = request_key(
                    request.id, request.command, request.parameters, _dedup_scope(request, caller)
                )
                return self._run_once(request, command, message, key)
        except StuiSessionError as exc:
            return self._error_reply(request_id, exc)
        return self._dispatch(request, command)

    def _run_once(
        self,
        request: Request,
        command: Callable[[Params], Result],
        message: bytes | bytearray | memoryview | str | Mapping[str, Any],
        key: bytes,
    ) -> dict[str, Any]:
        if self.replies is None:
            return self._dispatch(request, command)
        cost = len(message) if isinstance(message, (bytes, bytearray, memoryview, str)) else 1024
        return self.replies.run(key, lambda: self._dispatch(request, command), cost=2 * cost + 512)

    def _dispatch(self, request: Request, command: Callable[[Params], Result]) -> dict[str, Any]:
        try:
            self.service.check_rate(_rate_key(request.parameters, CURRENT_CALLER.get()))
            result = command(request.parameters)
        except StuiSessionError as exc:
            return self._error_reply(request.id, exc)
        except Exception:
            # a bug must not reach the transport; log the type only, never contents
            log.exception("internal error while handling a request")
            return self._error_reply(
                request.id, InternalError("Internal error while handling the request")
            )
        return {
            "id": request.id,
            "status": "success",
            "result": result,
            "timestamp": isoformat(self.service.clock.now()),
        }

    def cleanup_expired(self) -> int:
        """Sweep expired and closed sessions (see :meth:`SessionService.cleanup_expired`)."""
        return self.service.cleanup_expired()

    # -- envelope -----------------------------------------------------------------------
    def parse(self, message: bytes | bytearray | memoryview | str | Mapping[str, Any]) -> Request:
        """Validate the envelope of one message; raise :class:`InvalidRequest` if it is bad."""
        return parse_request(message, self.policy)

    def _error_reply(self, request_id: str | int | None, exc: StuiSessionError) -> dict[str, Any]:
        rid = exc.request_id if exc.request_id is not None else request_id
        return error_response(rid, exc, self.service.clock.now())

    # -- commands -----------------------------------------------------------------------
    def _create_session(self, params: Params) -> Result:
        client_id = val.client_id(params)
        client_info = val.json_object(params, "client_info") or {}
        config = val.json_object(params, "config")
        metadata = Metadata(
            client_info=client_info,
            last_client_version=val.optional_str(params, "client_version"),
            extra={"config": config} if config is not None else {},
        )
        created = self.service.create(client_id, metadata=metadata, creds=val.creds(params))
        result = session_record(created.session.info, created.session.created_at)
        del result["last_modified"]
        result["resume_token"] = created.resume_token
        result["client_token"] = created.client_token
        return result

    def _restore_session(self, params: Params) -> Result:
        session_id = val.session_id(params)
        creds = val.creds(params)
        since = val.optional_int(params, "since_revision", minimum=0)
        client_lineage = val.optional_str(params, "lineage", 64)
        restored = self.service.restore(session_id, creds)
        now = self.service.clock.now()
        record = session_record(restored.info, now)
        record["time_until_expiry"] = restored.info.time_until_expiry(now)
        if restored.rotated:
            record["session_id_rotated"] = True
            record["resume_token"] = restored.resume_token
            if restored.client_token is not None:
                record["client_token"] = restored.client_token
        if since is not None:
            session = restored.snapshot.session()
            from stuisession.state.deltas import sync_changes

            # changes only when the client's (lineage, revision) is provably on
            # this history: else the full state, saying why
            ops, reason = sync_changes(
                session.state, session.revision, session.lineage, since, client_lineage
            )
            if ops is not None:
                record.update(delta=True, since_revision=since, changes=ops)
                return record
            record["delta_reason"] = reason
        record["delta"] = False
        state_json = restored.snapshot.current_state_json()
        record_json = _json.dumps(record)
        if state_json == b"{}":
            return RawJSON(record_json)
        # the state's top-level keys are the upstream restore-result keys:
        # splice its members after the record instead of decoding them
        return RawJSON(record_json[:-1] + b"," + state_json[1:])

    def _update_session_state(self, params: Params) -> Result:
        session_id = val.session_id(params)
        creds = val.creds(params)
        update = val.state_update(params)
        base_revision = val.optional_int(params, "base_revision", minimum=1)
        session = self.service.update(
            session_id,
            update,
            creds,
            base_revision=base_revision,
            request_key=CURRENT_REQUEST.get(),
        )
        echo: Any = session.state.session_state
        if "session_state" in update.replace and "session_state" in update.raw:
            # replaced wholesale by exactly what the client sent: echo its bytes
            echo = RawJSON(update.raw["session_state"])
        return {
            "session_id": session.session_id,
            "last_modified": isoformat(session.last_modified),
            "session_state": echo,
            "update_successful": True,
            "revision": session.revision,
            "lineage": session.lineage,
        }

    def _close_session(self, params: Params) -> Result:
        session_id = val.session_id(params)
        val.optional_bool(params, "save_state", True)  # state is always kept until the sweep
        info = self.service.close(session_id, val.creds(params))
        return {
            "session_id": info.session_id,
            "closed": True,
            "revision": info.revision,
            "lineage": info.lineage,
        }

    def _watch_session(self, params: Params) -> Result:
        # (ext) a subscription token for the session's change notices (docs/notifications.md)
        session_id = val.session_id(params)
        info, token = self.service.watch(session_id, val.creds(params))
        result: dict[str, Any] = {
            "session_id": info.session_id,
            "subscription": token,
            "topic": self.service.subscriptions.topic(info.session_id).decode("ascii"),
            "revision": info.revision,
            "lineage": info.lineage,
        }
        return result

    def _get_session_info(self, params: Params) -> Result:
        session_id = val.session_id(params)
        info = self.service.info(session_id, val.creds(params))
        now = self.service.clock.now()
        result = session_record(info, now)
        result.update(
            time_until_expiry=info.time_until_expiry(now) if info.is_active(now) else 0,
            is_expired=info.is_expired(now),
            status=info.status.value if not info.is_expired(now) else "expired",
            last_accessed=isoformat(info.last_accessed),
            expires_at=isoformat(info.expires_at),
        )
        return result

    def _list_client_sessions(self, params: Params) -> Result:
        client_id = val.client_id(params)
        now = self.service.clock.now()
        sessions = []
        for info in self.service.list_client(client_id, val.creds(params)):
            item = session_record(info, now)
            del item["client_id"]
            item["time_until_expiry"] = info.time_until_expiry(now) if info.is_active(now) else 0
            sessions.append(item)
        return {"client_id": client_id, "session_count": len(sessions), "sessions": sessions}

    def _get_session_statistics(self, params: Params) -> Result:
        stats = self.service.statistics()
        policy = self.policy
        return {
            "total_sessions": stats.total_sessions,
            "active_clients": stats.active_clients,
            "max_sessions_per_client": policy.max_sessions_per_client,
            "default_timeout": policy.session_timeout,
            "cleanup_interval": policy.cleanup_interval,
            "active_sessions": stats.active_sessions,
            **self._extra_statistics(),
        }

    def _extra_statistics(self) -> dict[str, Any]:
        """The transport's statistics; per-connection details for operators only."""
        if self.extra_statistics is None:
            return {}
        extra = self.extra_statistics()
        if CURRENT_CALLER.get().operator:
            return extra
        return {k: v for k, v in extra.items() if k not in PRIVATE_STATISTICS}

    def _rotate_credentials(self, params: Params) -> Result:
        session_id = val.session_id(params)
        info, token = self.service.rotate_token(session_id, val.creds(params))
        return {
            "session_id": session_id,
            "resume_token": token,
            "token_generation": info.token_generation,
        }


#: members of the bridge's statistics only an operator may see
PRIVATE_STATISTICS = frozenset({"connections"})
#: commands whose reply gives nothing its credential does not already give
_CREDENTIAL_SCOPED = frozenset(
    {"update_session_state", "close_session", "save_context", "clear_context"}
)


def _dedup_scope(request: Request, caller: Caller) -> str:
    """Whose remembered replies *request* may be answered from.

    The caller's own: its authenticated key, else a ``resend_key`` parameter
    (a secret of 16-128 characters the client sends with every request, so a
    resend on a new socket is still the same caller), else its connection.
    One exception keeps upstream clients' resends safe when they come on a
    new, unauthenticated socket without a ``resend_key``: a change to a
    session whose reply issues no credential is scoped to the session
    credential presented (session id and resume token), since whoever
    presents it may read and change the session anyway. Creates, rotating
    restores and token rotations issue credentials and stay scoped to the
    caller.
    """
    if caller.authenticated:
        return caller.key
    resend_key = request.parameters.get("resend_key")
    if isinstance(resend_key, str) and 16 <= len(resend_key) <= 128:
        digest = hashlib.sha256(resend_key.encode("utf-8", "surrogatepass")).hexdigest()
        return "resend:" + digest
    if request.command not in _CREDENTIAL_SCOPED:
        return caller.key
    sid = request.parameters.get("session_id")
    token = request.parameters.get("resume_token")
    if not isinstance(sid, str) or not (token is None or isinstance(token, str)):
        return caller.key
    digest = hashlib.sha256(
        b"\x00".join(x.encode("utf-8", "surrogatepass") for x in (sid, token or ""))
    ).hexdigest()
    return "credential:" + digest


def _rate_key(params: Params, caller: Caller) -> str:
    # an authenticated peer is charged as itself (it can not take fresh ids);
    # else the client named in the request, else the session
    if caller.authenticated:
        return "k:" + fingerprint(caller.key, length=32)
    for name in ("client_id", "session_id"):
        value = params.get(name)
        if isinstance(value, str) and value:
            return f"{name[0]}:{value[:256]}"
    return "anonymous"

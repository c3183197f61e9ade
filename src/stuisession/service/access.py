"""Who may touch a session: ownership and credential checks with uniform timing.

Split out of :class:`~stuisession.service.core.SessionService`, which owns one
:class:`AccessGuard` (``service.access``). Any session the caller cannot have --
unknown, foreign, or with a bad token -- raises the one
:func:`~stuisession.errors.session_not_found` reply, and "not yours" takes the
same work as "does not exist" (see :meth:`AccessGuard.fetch`).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Protocol, TypeVar

from stuisession.codec.snapshot import Snapshot
from stuisession.errors import (
    IntegrityError,
    SessionExpired,
    SessionNotFound,
    StorageError,
    session_not_found,
)
from stuisession.ids import new_session_id
from stuisession.policy import Policy
from stuisession.security.auth import TokenAuthority
from stuisession.service.credentials import CLIENT_SCOPE, Credentials, Denied, check_session_ref
from stuisession.state import lifecycle
from stuisession.state.model import Session, SessionInfo
from stuisession.stores.base import SessionStore

_Loaded = TypeVar("_Loaded", Session, Snapshot)


class AuditHook(Protocol):
    """The service's :meth:`~stuisession.service.core.SessionService.audit_event`."""

    def __call__(
        self,
        event: str,
        *,
        client_id: str | None = None,
        session_id: str | None = None,
        outcome: str = "ok",
        reason: str | None = None,
    ) -> None: ...


def expired_by_retention(policy: Policy, info: SessionInfo, now: float) -> bool:
    """True when *info* was last accessed longer than ``policy.retention`` ago."""
    return now - info.last_accessed > policy.retention


def require_active(policy: Policy, info: SessionInfo, now: float) -> None:
    """Raise :class:`SessionExpired` (or the closed/expired error) unless *info* is usable."""
    if expired_by_retention(policy, info, now):
        raise SessionExpired()
    lifecycle.require_active(info, now)


class AccessGuard:
    """Loads sessions for a caller and decides whether its credentials may use them.

    :param audit_event: records refusals and integrity failures.
    :param now: the service's trusted time, Unix seconds.
    """

    def __init__(
        self,
        store: SessionStore,
        policy: Policy,
        authority: TokenAuthority,
        audit_event: AuditHook,
        now: Callable[[], float],
    ) -> None:
        self.store = store
        self.policy = policy
        self.authority = authority
        self.audit_event = audit_event
        self.now = now
        #: (key id, session id, sealed snapshot) of the dummy used for uniform timing
        self._dummy_head: tuple[str, str, bytes] | None = None
        #: a session id known to exist, read in place of an unknown one (uniform timing)
        self._decoy: str | None = None
        #: a session id that never exists (256 random bits), for :meth:`miss_probe`
        self._absent_id = new_session_id()

    def note_existing(self, session_id: str) -> None:
        """Remember *session_id* as known to exist (read in place of unknown ids)."""
        self._decoy = session_id

    def deny(self, session_id: str | None, creds: Credentials, reason: str) -> SessionNotFound:
        """Audit a refusal; return the uniform ``SessionNotFound`` to raise."""
        self.audit_event(
            "deny",
            client_id=creds.client_id,
            session_id=session_id,
            outcome="denied",
            reason=reason,
        )
        return Denied(session_not_found().message)

    def load(self, session_id: str, creds: Credentials) -> Session:
        """The session, if *creds* may have it."""
        return self.fetch(session_id, creds, self.store.load)

    def load_snapshot(self, session_id: str, creds: Credentials) -> Snapshot:
        """The session's verified snapshot, if *creds* may have it."""
        return self.fetch(session_id, creds, self.store.load_snapshot)

    def fetch(
        self, session_id: str, creds: Credentials, loader: Callable[[str], _Loaded]
    ) -> _Loaded:
        """Load with *loader*, then authorize; unknown ids are denied to identified callers.

        For an identified caller (or in strict mode) ownership is decided from the
        verified head first, and an unknown id does the same work on a dummy
        head: "not yours" and "does not exist" take the same time, whatever the
        size of the session.
        """
        check_session_ref(session_id)
        guarded = creds.identified or self.policy.strict
        if guarded:
            self.guarded_head(session_id, creds)
        try:
            loaded = loader(session_id)
        except SessionNotFound:
            if guarded:  # deleted between the two reads
                raise self.deny(session_id, creds, "unknown session") from None
            raise session_not_found() from None
        except IntegrityError as exc:
            self.audit_event(
                "integrity_failure", session_id=session_id, outcome="error", reason=exc.message
            )
            raise
        self.authorize(loaded if isinstance(loaded, SessionInfo) else loaded.info, creds)
        return loaded

    def head(self, session_id: str, creds: Credentials) -> SessionInfo:
        """The verified record of *session_id*; the same work and denial when there is none."""
        try:
            info = self.store.load_info(session_id)
        except SessionNotFound:
            self.owner_problem(self.decoy_info(), creds)  # same checks, result unused
            raise self.deny(session_id, creds, "unknown session") from None
        except IntegrityError as exc:
            self.audit_event(
                "integrity_failure", session_id=session_id, outcome="error", reason=exc.message
            )
            raise
        self._decoy = session_id
        return info

    def guarded_head(self, session_id: str, creds: Credentials) -> SessionInfo:
        """The verified, authorized record of *session_id*, or the uniform denial."""
        head = self.head(session_id, creds)
        problem = self.owner_problem(head, creds)
        if problem is not None:
            # the unknown-id path reads one missing and one existing head: so does
            # this one, then both deny alike
            self.miss_probe()
            raise self.deny(session_id, creds, problem)
        return head

    def miss_probe(self) -> None:
        """Look up a session id that does not exist, as an unknown id costs."""
        # a plain try (not contextlib.suppress): the unknown-id path makes no
        # context-manager calls either, so both paths make the same calls
        try:  # noqa: SIM105 (see above)
            self.store.load_info(self._absent_id)
        except (SessionNotFound, StorageError, IntegrityError):
            pass

    def decoy_info(self) -> SessionInfo:
        """A real head read through the store, as for an existing session.

        The read goes down the store's own path (its caches, its I/O) for a
        session known to exist, so an unknown id costs what a foreign one does;
        with none known, a sealed dummy head is verified instead.
        """
        decoy = self._decoy
        if decoy is not None:
            try:
                return self.store.load_info(decoy)
            except (SessionNotFound, IntegrityError, StorageError):
                self._decoy = None
        head = self._dummy_head
        if head is None or head[0] != self.store.codec.keyring.current_id:
            dummy = lifecycle.new_session(
                "stuisession-timing-dummy", now=self.now(), timeout=self.policy.session_timeout
            )
            kid = self.store.codec.keyring.current_id
            head = self._dummy_head = (kid, dummy.session_id, self.store.codec.encode(dummy))
        return self.store.codec.read_info(head[2], expected_session_id=head[1])

    def owner_problem(self, info: SessionInfo, creds: Credentials) -> str | None:
        """Why *creds* may not use *info*'s session (None: they may).

        Every check runs whatever the earlier ones said, so the time taken does
        not tell which failed.
        """
        problems: list[str] = []
        if creds.client_id is not None and not hmac.compare_digest(
            creds.client_id.encode("utf-8", "surrogatepass"),
            info.client_id.encode("utf-8", "surrogatepass"),
        ):
            problems.append("not the owner")
        if not creds.caller.may_act_as(info.client_id):
            problems.append("not bound to the caller's key")
        if not self.policy.client_allowed(info.client_id):
            problems.append("client not allowed")
        if (self.policy.strict or creds.resume_token is not None) and not self.authority.is_valid(
            creds.resume_token,
            info.client_id,
            info.session_id,
            min_generation=info.token_generation,
        ):
            problems.append("invalid resume token")
        return problems[0] if problems else None

    def authorize(self, info: SessionInfo, creds: Credentials) -> None:
        """Raise the audited uniform denial unless *creds* may use *info*'s session."""
        problem = self.owner_problem(info, creds)
        if problem is not None:
            raise self.deny(info.session_id, creds, problem)

    def proves_client(self, client_id: str, creds: Credentials) -> bool:
        """True when the caller proved it is *client_id*: a bound key or its client token."""
        if not creds.caller.may_act_as(client_id):
            return False
        token_ok = self.authority.is_valid(creds.client_token, client_id, CLIENT_SCOPE)
        return creds.caller.proves(client_id) or token_ok


__all__ = ["AccessGuard", "expired_by_retention", "require_active"]

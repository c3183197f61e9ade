"""The session service: policy applied to a store.

This layer sits between the protocol and the store. It knows the rules
(limits, expiry, who may touch what, how an update is applied, what is
audited) and nothing of JSON envelopes or sockets; it raises
:mod:`stuisession.errors` exceptions that the protocol layer turns into error
responses.

Access control: every command on a session checks the caller's
:class:`Credentials` against the session's owner. Any session the caller cannot
have -- unknown, foreign (another ``client_id``, a bad token, a client no longer
allowed), or an id that is not in our format (e.g. one the Pharo backend issued) --
raises the one reply :func:`~stuisession.errors.session_not_found` (upstream
``SessionNotFound``, no details), so probing reveals nothing. Only after the caller
passed these checks does an expired or closed session answer with
``details.reason``. In strict mode every session command must carry the session's
resume token.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from stuisession.clock import Clock, SystemClock
from stuisession.errors import (
    AccessDenied,
    RateLimited,
    SessionError,
    ValidationError,
)
from stuisession.ids import check_client_id, is_valid_session_id
from stuisession.policy import Policy
from stuisession.security.aggregate import RefusalAggregator  # [limits hook]
from stuisession.security.audit import AuditLog
from stuisession.security.auth import TokenAuthority
from stuisession.security.ratelimit import TokenBucketLimiter
from stuisession.security.subscriptions import SubscriptionAuthority
from stuisession.service import restore as _restore
from stuisession.service import tokens as _tokens
from stuisession.service import updates as _updates
from stuisession.service.access import AccessGuard, require_active
from stuisession.service.access import expired_by_retention as _expired_by_retention
from stuisession.service.caps import CapacityExceeded, GlobalCaps, StateSizeGuard
from stuisession.service.clockguard import TrustedClock
from stuisession.service.credentials import (
    ANONYMOUS,
    CLIENT_SCOPE,
    Credentials,
    check_session_ref,
)
from stuisession.service.results import Created, Restored, Statistics
from stuisession.service.sweep import Sweeper, SweepResult
from stuisession.service.updates import APPLIED_KEYS
from stuisession.state import lifecycle
from stuisession.state.deltas import changes_since
from stuisession.state.model import Session, SessionInfo, SessionStatus
from stuisession.state.schema import Metadata, SessionState
from stuisession.state.updates import StateUpdate
from stuisession.stores.base import SessionStore

log = logging.getLogger("stuisession.service")


class SessionService:
    """Applies a :class:`Policy` to a :class:`SessionStore`.

    Thread-safe: several threads may call it at once; every change is a
    compare-and-swap on the session revision, retried on conflict.

    :param audit: where security-relevant events are recorded (None: not recorded).
    :param authority: issues and checks resume tokens (default: keyed by the store's keyring).
    """

    def __init__(
        self,
        store: SessionStore,
        policy: Policy | None = None,
        *,
        clock: Clock | None = None,
        audit: AuditLog | None = None,
        authority: TokenAuthority | None = None,
    ) -> None:
        self.store = store
        self.policy = policy or Policy()
        self.clock: Clock = clock or SystemClock()
        self.audit = audit
        if audit is not None:
            # every acknowledged write records the audit log's position: rolling
            # the log back then shows in `audit verify` (docs/security.md)
            store.anchor_audit(audit)
        self.authority = authority or TokenAuthority(
            store.codec.keyring, clock=self.clock, token_ttl=self.policy.token_ttl
        )
        self.limiter = (
            None
            if self.policy.rate_limit is None
            else TokenBucketLimiter(
                self.policy.rate_limit,
                self.policy.rate_burst,
                # on the system clock, rate limiting runs on monotonic time, which
                # never jumps; an injected clock (tests, simulations) is used as is
                clock=None if isinstance(self.clock, SystemClock) else self.clock,
            )
        )
        self._trusted = TrustedClock(self.clock)
        #: ownership and credential checks, with uniform timing (service/access.py)
        self.access = AccessGuard(store, self.policy, self.authority, self.audit_event, self.now)
        # [limits hook] global caps, decoded state size, refusals audited as summaries
        self.caps = GlobalCaps(store, self.policy)
        self.state_guard = StateSizeGuard(self.policy.max_state_bytes)
        self.refusals = (
            None if audit is None else RefusalAggregator(audit, self.policy.audit_interval)
        )
        #: the expiry sweep, bounded per step
        self.sweeper = Sweeper(self)
        #: notification topics and watch tokens (docs/notifications.md)
        self.subscriptions = SubscriptionAuthority(store.codec.keyring)

    # -- helpers --------------------------------------------------------------------
    def now(self) -> float:
        """The time records are stamped and judged with, Unix seconds: the wall clock,
        continued by elapsed real time through a backward step (see
        :class:`~stuisession.service.clockguard.TrustedClock`)."""
        return self._trusted.now()

    def audit_event(
        self,
        event: str,
        *,
        client_id: str | None = None,
        session_id: str | None = None,
        outcome: str = "ok",
        reason: str | None = None,
    ) -> None:
        """Record a security event in the audit log, if one is configured.

        A failing audit log never fails the request: the error is logged, and the gap
        shows in ``stuisession audit verify``.
        """
        if self.audit is None:
            return
        if outcome == "denied" and self.refusals is not None:  # [limits hook]
            self.refusals.add(event, client_id, reason)
            return
        try:
            self.audit.record(
                event, client_id=client_id, session_id=session_id, outcome=outcome, reason=reason
            )
        except Exception:
            # the audit trail must not take the service down; the gap is visible
            # to `stuisession audit verify` (the head file no longer matches)
            log.exception("could not append to the audit log")

    def check_rate(self, key: str) -> None:
        """Charge one request to *key*'s token bucket; :class:`RateLimited` when empty."""
        if self.limiter is None:
            return
        try:
            self.limiter.check(key)
        except RateLimited:
            # a session id is a bearer secret: the audit log keeps only its keyed hash
            kind, _, value = key.partition(":")
            if kind == "s" and is_valid_session_id(value):
                self.audit_event("rate_limit", session_id=value, outcome="denied")
            elif kind == "c" and _valid_client_id(value):
                self.audit_event("rate_limit", client_id=value, outcome="denied")
            else:
                self.audit_event("rate_limit", outcome="denied", reason=kind[:16] or None)
            raise

    def expired_by_retention(self, info: SessionInfo, now: float) -> bool:
        """True when *info* was last accessed longer than ``Policy.retention`` ago."""
        return _expired_by_retention(self.policy, info, now)

    # -- commands -------------------------------------------------------------------
    def create(
        self,
        client_id: str,
        *,
        metadata: Metadata | None = None,
        creds: Credentials | None = None,
    ) -> Created:
        """Create a session for *client_id* (limit and allow/deny lists apply).

        Claiming a client id is not proof of being that client. When the client
        already has active sessions, the caller must prove it (a key bound to
        the client id, or the client token given with the client's earlier
        sessions, as ``creds.client_token``): in strict mode the create is
        refused without proof (``SessionError``); in compat mode the session is
        created but no client token is handed out (``Created.client_token`` None).

        Raises :class:`SessionError` (not allowed, limit, proof missing).
        """
        check_client_id(client_id)
        creds = creds or ANONYMOUS
        if not self.policy.client_allowed(client_id) or not creds.caller.may_act_as(client_id):
            self.audit_event(
                "create", client_id=client_id, outcome="denied", reason="client not allowed"
            )
            raise SessionError("Client is not allowed to use sessions")
        proven = self.access.proves_client(client_id, creds)
        now = self.now()
        # (not a limit check: the store counts and creates atomically below)
        active = not proven and any(i.is_active(now) for i in self.store.list_by_client(client_id))
        if active and self.policy.strict:
            # a mere claim must not get this client's token nor use up its limit
            self.audit_event("create", client_id=client_id, outcome="denied", reason="unproven")
            raise SessionError(
                "Client already has sessions: present its client_token "
                "(or connect with a key bound to it) to create more"
            )
        try:  # [limits hook] global caps (total, creates/s, disk)
            self.caps.check_create()
        except CapacityExceeded as exc:
            self.audit_event("create", client_id=client_id, outcome="denied", reason=exc.cap)
            raise
        session = lifecycle.new_session(
            client_id,
            now=now,
            timeout=self.policy.session_timeout,
            absolute_lifetime=self.policy.absolute_lifetime,
            state=SessionState(metadata=metadata or Metadata()),
            session_id=self.store.new_session_id(client_id),
        )
        try:
            # the store counts and creates in one atomic step (across processes
            # and bridges sharing it), so the limit holds under concurrency
            with _updates.announcing(self.store, session.info, "created"):
                self.store.create(
                    session,
                    max_size=self.policy.max_snapshot_size,
                    max_per_client=self.policy.max_sessions_per_client,
                    now=now,
                )
        except SessionError as exc:
            if "limit" in exc.details:
                self.audit_event("create", client_id=client_id, outcome="denied", reason="limit")
            raise
        self.audit_event("create", client_id=client_id, session_id=session.session_id)
        self.access.note_existing(session.session_id)
        return Created(
            session=session,
            resume_token=self.authority.issue(client_id, session.session_id),
            client_token=(
                self.authority.issue(client_id, CLIENT_SCOPE) if proven or not active else None
            ),
        )

    def restore(self, session_id: str, creds: Credentials = ANONYMOUS) -> Restored:
        """Verify and return a session for its client, recording the access.

        In strict mode (or with ``Policy.rotate_on_restore``) the session gets a
        new id and a new resume token; the old id stops working.
        """
        return _restore.restore(self, session_id, creds)

    def rotate_token(
        self, session_id: str, creds: Credentials = ANONYMOUS
    ) -> tuple[SessionInfo, str]:
        """Revoke every earlier resume token of the session and issue a new one.

        A compare-and-swap on the record version: of two concurrent rotations
        one wins and the other is redone on top of it (a higher generation), so
        two tokens of one generation are never issued.
        """
        return _tokens.rotate_token(self, session_id, creds)

    def info(self, session_id: str, creds: Credentials = ANONYMOUS) -> SessionInfo:
        """The session's record (also for expired or closed sessions not yet swept)."""
        check_session_ref(session_id)
        if creds.identified or self.policy.strict:
            return self.access.guarded_head(session_id, creds)
        info = self.store.load_info(session_id)
        self.access.authorize(info, creds)
        return info

    def watch(self, session_id: str, creds: Credentials = ANONYMOUS) -> tuple[SessionInfo, str]:
        """The active session's record and a subscription token for its change notices.

        Same checks as a restore (owner, token, active); the token is bound to the
        session's current token generation (``rotate_credentials`` revokes it).
        """
        info = self.info(session_id, creds)
        require_active(self.policy, info, self.now())
        return info, self.subscriptions.issue(info.session_id, info.token_generation)

    def check_watch(self, token: bytes | str) -> SessionInfo:
        """The record of the session *token* proves its holder may watch.

        Raises :class:`AccessDenied` for a token not ours, revoked by a credential
        rotation, or naming a session that is gone or not active.
        """
        return _tokens.check_watch(self, token)

    def load(self, session_id: str, creds: Credentials = ANONYMOUS) -> Session:
        """The full, active session (for read-only commands that need the state)."""
        session = self.access.load(session_id, creds)
        require_active(self.policy, session, self.now())
        return session

    def changes_since(
        self, session_id: str, since_revision: int, creds: Credentials = ANONYMOUS
    ) -> tuple[Session, list[dict[str, Any]] | None]:
        """The session and the operations since *since_revision* (None: not known any more)."""
        session = self.load(session_id, creds)
        return session, changes_since(session.state, session.revision, since_revision)

    def update(
        self,
        session_id: str,
        update: StateUpdate,
        creds: Credentials = ANONYMOUS,
        *,
        base_revision: int | None = None,
        request_key: str | None = None,
    ) -> Session:
        """Apply *update* to the current state and commit it with compare-and-swap.

        Without *base_revision* a lost race is retried on the fresh state, so
        every acknowledged update is applied on top of the latest one. With it,
        the update is applied only if no revision after *base_revision* touched
        the same data (see :func:`stuisession.updates.check_rebase`); otherwise
        :class:`ConflictError` carries the current revision.

        *request_key* (a digest of caller, request id and content) makes the
        update apply at most once, durably: the record keeps the last
        :data:`APPLIED_KEYS` keys with the revision each produced, checked and
        written in the same compare-and-swap. A resend returns the current
        session with ``revision`` set to the one the first application produced.
        """
        return _updates.update(
            self, session_id, update, creds, base_revision=base_revision, request_key=request_key
        )

    def close(self, session_id: str, creds: Credentials = ANONYMOUS) -> SessionInfo:
        """Close a session (idempotent: closing a closed session succeeds)."""
        return _updates.close(self, session_id, creds)

    def list_client(self, client_id: str, creds: Credentials = ANONYMOUS) -> list[SessionInfo]:
        """The client's sessions that are not closed (expired ones until swept).

        The caller must prove it is the client: a transport identity bound to
        it (or an in-process caller), or the client token issued at create —
        in compat mode too, since a client id is only a claim. Otherwise
        :class:`AccessDenied` ("Invalid credentials").
        """
        check_client_id(client_id)
        if not self.access.proves_client(client_id, creds):
            self.audit_event(
                "deny", client_id=client_id, outcome="denied", reason="client not proven"
            )
            raise AccessDenied("Invalid credentials")
        return [
            i for i in self.store.list_by_client(client_id) if i.status is not SessionStatus.CLOSED
        ]

    def statistics(self) -> Statistics:
        """System-wide counts."""
        stats = self.store.statistics(self.now())
        return Statistics(
            total_sessions=stats.total_sessions,
            active_sessions=stats.active_sessions,
            active_clients=stats.clients,
        )

    # -- expiry sweep (see :mod:`stuisession.service.sweep`) ---------------------------
    def sweep_step(self, max_items: int | None = None) -> SweepResult:
        """One bounded step of the expiry sweep (see :meth:`Sweeper.step`)."""
        return self.sweeper.step(max_items)

    def iter_sweepable(self) -> Iterator[SessionInfo]:
        """Records of sessions the sweep would delete now (for dry runs)."""
        return self.sweeper.sweepable()

    def cleanup_expired(self) -> int:
        """A full sweep: delete expired, closed and past-retention sessions; return how many."""
        return self.sweeper.full_pass()


def _valid_client_id(value: str) -> bool:
    try:
        check_client_id(value)
    except ValidationError:
        return False
    return True


__all__ = [
    "ANONYMOUS",
    "APPLIED_KEYS",
    "CLIENT_SCOPE",
    "Created",
    "Credentials",
    "Restored",
    "SessionService",
    "Statistics",
    "SweepResult",
    "check_session_ref",
]

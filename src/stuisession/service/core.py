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

import contextlib
import hashlib
import hmac
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, TypeVar

import attrs

from stuisession.clock import Clock, SystemClock
from stuisession.codec.snapshot import Snapshot
from stuisession.errors import (
    AccessDenied,
    ConflictError,
    IntegrityError,
    RateLimited,
    SessionError,
    SessionExpired,
    SessionNotFound,
    StorageError,
    ValidationError,
    session_not_found,
)
from stuisession.ids import check_client_id, is_valid_session_id, new_session_id
from stuisession.policy import Policy
from stuisession.security.aggregate import RefusalAggregator  # [limits hook]
from stuisession.security.audit import AuditLog
from stuisession.security.auth import TokenAuthority
from stuisession.security.identity import Caller
from stuisession.security.ratelimit import TokenBucketLimiter
from stuisession.security.subscriptions import SubscriptionAuthority
from stuisession.service.caps import CapacityExceeded, GlobalCaps, StateSizeGuard
from stuisession.service.sweep import Sweeper, SweepResult
from stuisession.state import lifecycle
from stuisession.state.deltas import changes_since, check_rebase
from stuisession.state.model import Session, SessionInfo, SessionStatus
from stuisession.state.schema import Metadata, SessionState
from stuisession.state.updates import StateUpdate
from stuisession.stores.base import ChangeEvent, SessionStore

log = logging.getLogger("stuisession.service")

_Loaded = TypeVar("_Loaded", Session, Snapshot)

#: the scope string client tokens are bound to (in place of a session id)
CLIENT_SCOPE = "client-scope"


class _Denied(SessionNotFound):
    """A refusal already audited as ``deny``; on the wire identical to an unknown session."""


def check_session_ref(session_id: object) -> str:
    """*session_id* if it may name one of our sessions.

    :class:`ValidationError` (upstream ``SessionError``) when it is not a string; the
    one :func:`session_not_found` reply when it is a string in any other format (an
    upstream client may hold an id another backend issued: it must fall back to
    ``create_session``).
    """
    if not isinstance(session_id, str):
        raise ValidationError("session_id must be a string", field="session_id")
    if not is_valid_session_id(session_id):
        raise session_not_found()
    return session_id


@attrs.frozen
class Credentials:
    """What a caller presents besides the session id."""

    client_id: str | None = None
    resume_token: str | None = None
    client_token: str | None = None
    #: who the transport says is calling (default: an unauthenticated caller)
    caller: Caller = attrs.field(factory=Caller.anonymous)

    @property
    def identified(self) -> bool:
        """True when the caller claims an identity (then errors must not reveal existence)."""
        return (
            self.client_id is not None
            or self.resume_token is not None
            or self.caller.client_ids is not None
        )


ANONYMOUS = Credentials()


@attrs.frozen
class Restored:
    """What a restore hands back: the session record and its verified snapshot."""

    info: SessionInfo
    snapshot: Snapshot
    #: a new resume token when the session id was rotated (strict mode)
    resume_token: str | None = None
    #: True when the session got a new id
    rotated: bool = False
    #: a refreshed client token (strict mode, with a rotation)
    client_token: str | None = None


@attrs.frozen
class Created:
    """A new session and the credentials issued with it."""

    session: Session
    resume_token: str
    #: None when the caller did not prove it is this client (the client id had
    #: sessions already and neither a client token nor a bound key was presented)
    client_token: str | None


@attrs.frozen
class Statistics:
    """System-wide counts for ``get_session_statistics``."""

    total_sessions: int
    active_sessions: int
    active_clients: int


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
        # serialises the limit check and the create of one client (in this process)
        self._create_locks = [threading.Lock() for _ in range(64)]
        #: (key id, session id, sealed snapshot) of the dummy used for uniform timing
        self._dummy_head: tuple[str, str, bytes] | None = None
        #: a session id known to exist, read in place of an unknown one (uniform timing)
        self._decoy: str | None = None
        #: a session id that never exists (256 random bits), for :meth:`_miss_probe`
        self._absent_id = new_session_id()
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
    def _now(self) -> float:
        return self.clock.now()

    def _announcing(self, info: SessionInfo, event: str) -> AbstractContextManager[None]:
        # a hint for watchers once the write in the block committed (docs/notifications.md)
        if not self.store.has_change_listeners:
            return contextlib.nullcontext()
        return self.store.announcing(ChangeEvent.of(info, event))

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

    def _deny(self, session_id: str | None, creds: Credentials, reason: str) -> SessionNotFound:
        self.audit_event(
            "deny",
            client_id=creds.client_id,
            session_id=session_id,
            outcome="denied",
            reason=reason,
        )
        return _Denied(session_not_found().message)

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

    def _load(self, session_id: str, creds: Credentials) -> Session:
        return self._fetch(session_id, creds, self.store.load)

    def _load_snapshot(self, session_id: str, creds: Credentials) -> Snapshot:
        return self._fetch(session_id, creds, self.store.load_snapshot)

    def _fetch(
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
            self._guarded_head(session_id, creds)
        try:
            loaded = loader(session_id)
        except SessionNotFound:
            if guarded:  # deleted between the two reads
                raise self._deny(session_id, creds, "unknown session") from None
            raise session_not_found() from None
        except IntegrityError as exc:
            self.audit_event(
                "integrity_failure", session_id=session_id, outcome="error", reason=exc.message
            )
            raise
        self._authorize(loaded if isinstance(loaded, SessionInfo) else loaded.info, creds)
        return loaded

    def _head(self, session_id: str, creds: Credentials) -> SessionInfo:
        """The verified record of *session_id*; the same work and denial when there is none."""
        try:
            info = self.store.load_info(session_id)
        except SessionNotFound:
            self._owner_problem(self._decoy_info(), creds)  # same checks, result unused
            raise self._deny(session_id, creds, "unknown session") from None
        except IntegrityError as exc:
            self.audit_event(
                "integrity_failure", session_id=session_id, outcome="error", reason=exc.message
            )
            raise
        self._decoy = session_id
        return info

    def _guarded_head(self, session_id: str, creds: Credentials) -> SessionInfo:
        """The verified, authorized record of *session_id*, or the uniform denial."""
        head = self._head(session_id, creds)
        problem = self._owner_problem(head, creds)
        if problem is not None:
            # the unknown-id path reads one missing and one existing head: so does
            # this one, then both deny alike
            self._miss_probe()
            raise self._deny(session_id, creds, problem)
        return head

    def _miss_probe(self) -> None:
        """Look up a session id that does not exist, as an unknown id costs."""
        with contextlib.suppress(SessionNotFound, StorageError, IntegrityError):
            self.store.load_info(self._absent_id)

    def _decoy_info(self) -> SessionInfo:
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
                "stuisession-timing-dummy", now=self._now(), timeout=self.policy.session_timeout
            )
            kid = self.store.codec.keyring.current_id
            head = self._dummy_head = (kid, dummy.session_id, self.store.codec.encode(dummy))
        return self.store.codec.read_info(head[2], expected_session_id=head[1])

    def _owner_problem(self, info: SessionInfo, creds: Credentials) -> str | None:
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

    def _authorize(self, info: SessionInfo, creds: Credentials) -> None:
        problem = self._owner_problem(info, creds)
        if problem is not None:
            raise self._deny(info.session_id, creds, problem)

    def _proves_client(self, client_id: str, creds: Credentials) -> bool:
        """True when the caller proved it is *client_id*: a bound key or its client token."""
        if not creds.caller.may_act_as(client_id):
            return False
        token_ok = self.authority.is_valid(creds.client_token, client_id, CLIENT_SCOPE)
        return creds.caller.proves(client_id) or token_ok

    def expired_by_retention(self, info: SessionInfo, now: float) -> bool:
        """True when *info* was last accessed longer than ``Policy.retention`` ago."""
        return now - info.last_accessed > self.policy.retention

    def _require_active(self, info: SessionInfo, now: float) -> None:
        if self.expired_by_retention(info, now):
            raise SessionExpired()
        lifecycle.require_active(info, now)

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
        proven = self._proves_client(client_id, creds)
        stripe = int.from_bytes(hashlib.blake2b(client_id.encode(), digest_size=2).digest())
        with self._create_locks[stripe % len(self._create_locks)]:
            now = self._now()
            active = [i for i in self.store.list_by_client(client_id) if i.is_active(now)]
            if active and not proven and self.policy.strict:
                # a mere claim must not get this client's token nor use up its limit
                self.audit_event("create", client_id=client_id, outcome="denied", reason="unproven")
                raise SessionError(
                    "Client already has sessions: present its client_token "
                    "(or connect with a key bound to it) to create more"
                )
            if len(active) >= self.policy.max_sessions_per_client:
                self.audit_event("create", client_id=client_id, outcome="denied", reason="limit")
                raise SessionError(
                    f"Client has reached the limit of {self.policy.max_sessions_per_client} "
                    "active sessions",
                    limit=self.policy.max_sessions_per_client,
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
            with self._announcing(session.info, "created"):
                self.store.create_within_limit(
                    session,
                    limit=self.policy.max_sessions_per_client,
                    max_size=self.policy.max_snapshot_size,
                )
        self.audit_event("create", client_id=client_id, session_id=session.session_id)
        self._decoy = session.session_id
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
        try:
            snap = self._load_snapshot(session_id, creds)
            info = snap.info
            now = self._now()
            self._require_active(info, now)
        except (SessionNotFound, IntegrityError) as exc:
            if not isinstance(exc, _Denied):
                self.audit_event(
                    "restore",
                    client_id=creds.client_id,
                    session_id=session_id,
                    outcome="error",
                    reason=str(exc.details.get("reason", exc.message)),
                )
            raise
        if self.policy.rotates_on_restore:
            return self._rotate_id(snap, now)
        if lifecycle.needs_touch(info, now, self.policy.touch_granularity):
            touched = lifecycle.touch(info, now)
            try:
                self.store.save_info(snap, touched, expected_revision=info.revision)
                info = touched
            except ConflictError:
                # someone changed the session meanwhile; their write refreshed the
                # access time, and this reader's view is still a committed revision
                pass
            except StorageError as exc:
                # recording the access is best effort: the session itself was read
                # intact (a full disk or read-only store must not block restores);
                # the idle expiry then counts from the last recorded access
                log.warning("could not record a session access: %s", exc.message)
        self.audit_event("restore", client_id=info.client_id, session_id=session_id)
        return Restored(info=info, snapshot=snap)

    def _rotate_id(self, snap: Snapshot, now: float) -> Restored:
        old = snap.session()
        new = attrs.evolve(
            lifecycle.touch(old, now),
            session_id=self.store.new_session_id(old.client_id),
            token_generation=0,
        )
        # the new record exists before the old one goes: a crash never loses the session
        self.store.create(new)
        try:
            closed = lifecycle.close(old, now)
            with self._announcing(closed.info, "rotated"):
                self.store.save(closed, expected_revision=old.revision)
        except ConflictError:
            self.store.delete(new.session_id)
            raise
        self.store.delete(old.session_id)
        self.audit_event(
            "restore",
            client_id=old.client_id,
            session_id=new.session_id,
            reason="session id rotated",
        )
        return Restored(
            info=new.info,
            snapshot=self.store.load_snapshot(new.session_id),
            resume_token=self.authority.issue(new.client_id, new.session_id),
            rotated=True,
            # the holder of the session's token is its client: refresh its client token
            client_token=self.authority.issue(new.client_id, CLIENT_SCOPE),
        )

    def rotate_token(
        self, session_id: str, creds: Credentials = ANONYMOUS
    ) -> tuple[SessionInfo, str]:
        """Revoke every earlier resume token of the session and issue a new one."""
        for _ in range(self.policy.max_update_retries):
            snap = self._load_snapshot(session_id, creds)
            now = self._now()
            self._require_active(snap.info, now)
            info = attrs.evolve(snap.info, token_generation=snap.info.token_generation + 1)
            try:
                with self._announcing(info, "rotated"):
                    self.store.save_info(snap, info, expected_revision=snap.info.revision)
            except ConflictError:
                continue
            self.audit_event("token_rotation", client_id=info.client_id, session_id=session_id)
            token = self.authority.issue(
                info.client_id, session_id, generation=info.token_generation
            )
            return info, token
        raise ConflictError("Session is being changed too often; retry")

    def info(self, session_id: str, creds: Credentials = ANONYMOUS) -> SessionInfo:
        """The session's record (also for expired or closed sessions not yet swept)."""
        check_session_ref(session_id)
        if creds.identified or self.policy.strict:
            return self._guarded_head(session_id, creds)
        info = self.store.load_info(session_id)
        self._authorize(info, creds)
        return info

    def watch(self, session_id: str, creds: Credentials = ANONYMOUS) -> tuple[SessionInfo, str]:
        """The active session's record and a subscription token for its change notices.

        Same checks as a restore (owner, token, active); the token is bound to the
        session's current token generation (``rotate_credentials`` revokes it).
        """
        info = self.info(session_id, creds)
        self._require_active(info, self._now())
        return info, self.subscriptions.issue(info.session_id, info.token_generation)

    def check_watch(self, token: bytes | str) -> SessionInfo:
        """The record of the session *token* proves its holder may watch.

        Raises :class:`AccessDenied` for a token not ours, revoked by a credential
        rotation, or naming a session that is gone or not active.
        """
        session_id, generation = self.subscriptions.open(token)
        try:
            info = self.store.load_info(session_id)
        except (SessionNotFound, IntegrityError):
            raise AccessDenied("invalid subscription token") from None
        if generation < info.token_generation or not info.is_active(self._now()):
            raise AccessDenied("invalid subscription token")
        return info

    def load(self, session_id: str, creds: Credentials = ANONYMOUS) -> Session:
        """The full, active session (for read-only commands that need the state)."""
        session = self._load(session_id, creds)
        self._require_active(session, self._now())
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
    ) -> Session:
        """Apply *update* to the current state and commit it with compare-and-swap.

        Without *base_revision* a lost race is retried on the fresh state, so
        every acknowledged update is applied on top of the latest one. With it,
        the update is applied only if no revision after *base_revision* touched
        the same data (see :func:`stuisession.updates.check_rebase`); otherwise
        :class:`ConflictError` carries the current revision.
        """
        for _ in range(self.policy.max_update_retries):
            current = self._load(session_id, creds)
            now = self._now()
            self._require_active(current, now)
            if base_revision is not None:
                check_rebase(current.state, current.revision, update, base_revision)
            new = lifecycle.with_state(
                current, update.apply(current.state, current.revision + 1), now
            )
            self.state_guard.check(  # [limits hook] decoded state size
                session_id, current.revision, new.state, len(update.to_json()), new.revision
            )
            try:
                event = "updated" if update.counts_as_update else "context_saved"
                with self._announcing(new.info, event):
                    self.store.save(
                        new,
                        expected_revision=current.revision,
                        max_size=self.policy.max_snapshot_size,
                        update=update,
                    )
            except ConflictError:
                continue
            if self.policy.audit_updates:
                self.audit_event("update", client_id=current.client_id, session_id=session_id)
            return new
        raise ConflictError("Session is being changed too often; retry the update")

    def close(self, session_id: str, creds: Credentials = ANONYMOUS) -> SessionInfo:
        """Close a session (idempotent: closing a closed session succeeds)."""
        for _ in range(self.policy.max_update_retries):
            current = self._load(session_id, creds)
            if current.status is SessionStatus.CLOSED:
                return current.info
            closed = lifecycle.close(current, self._now())
            try:
                with self._announcing(closed.info, "closed"):
                    self.store.save(closed, expected_revision=current.revision)
            except ConflictError:
                continue
            self.audit_event("close", client_id=current.client_id, session_id=session_id)
            return closed.info
        raise ConflictError("Session is being changed too often; retry closing it")

    def list_client(self, client_id: str, creds: Credentials = ANONYMOUS) -> list[SessionInfo]:
        """The client's sessions that are not closed (expired ones until swept).

        The caller must prove it is the client: a transport identity bound to
        it (or an in-process caller), or the client token issued at create —
        in compat mode too, since a client id is only a claim. Otherwise
        :class:`AccessDenied` ("Invalid credentials").
        """
        check_client_id(client_id)
        if not self._proves_client(client_id, creds):
            self.audit_event(
                "deny", client_id=client_id, outcome="denied", reason="client not proven"
            )
            raise AccessDenied("Invalid credentials")
        return [
            i for i in self.store.list_by_client(client_id) if i.status is not SessionStatus.CLOSED
        ]

    def statistics(self) -> Statistics:
        """System-wide counts."""
        stats = self.store.statistics(self._now())
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
    "CLIENT_SCOPE",
    "Created",
    "Credentials",
    "Restored",
    "SessionService",
    "Statistics",
    "SweepResult",
    "check_session_ref",
]

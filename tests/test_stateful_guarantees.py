"""Interleaved operations on two bridges against a reference model (issue 14).

A Hypothesis ``RuleBasedStateMachine`` drives two services ("bridges") sharing
one store (memory, or two file-store instances on one directory): create
(with the per-client limit), update with and without ``base_revision``,
restore, rotate, close, sweep and the passing of time -- plus operations that
force another bridge's write between a read and its write (a restore's
access-time write racing a rotation, an update racing an update). The model
says what must hold: revisions and token generations, state contents, which
tokens work, which sessions exist.

Time: a session is surely active while it was used less than
``timeout - touch_granularity`` ago (the access time may be recorded that
late), surely expired once ``timeout`` passed since its last use; between the
two, either answer is accepted and the model follows what was observed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from typing import Any

import attrs
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from stuisession import FileStore, ManualClock, MemoryStore, Policy
from stuisession.errors import ConflictError, SessionError, SessionNotFound
from stuisession.keys import Keyring
from stuisession.service.core import Credentials, SessionService
from stuisession.state.updates import StateUpdate
from stuisession.stores.base import SessionStore
from volume import examples

TIMEOUT = 600
LIMIT = 3
POLICY = Policy(
    session_timeout=TIMEOUT,
    max_sessions_per_client=LIMIT,
    rate_limit=None,
    max_creates_per_second=None,
)
GRANULARITY = POLICY.touch_granularity
CLIENTS = ["alice", "bob"]
#: random programs per machine; the file-store one draws fewer in make test (each of its
#: steps does real file I/O): full volume in make faults (marker `volume`)
EXAMPLES = int(os.environ.get("STUISESSION_FAULT_ITERATIONS", "0")) or 25
FILE_EXAMPLES = int(os.environ.get("STUISESSION_FAULT_ITERATIONS", "0")) or examples(
    full=25, quick=10
)
pytestmark = pytest.mark.volume


@attrs.define
class Model:
    sid: str
    client: str
    token: str
    revision: int = 1
    generation: int = 0
    data: dict[str, int] = attrs.Factory(dict)
    closed: bool = False
    last_use: float = 0.0
    dead_tokens: list[str] = attrs.Factory(list)


def _interleave_once(store: SessionStore, method: str, other: Any) -> None:
    """Run *other* right before the next call of ``store.<method>`` (after its read)."""
    real = getattr(store, method)
    started = threading.Event()

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if not started.is_set():
            started.set()
            setattr(store, method, real)
            other()
        return real(*args, **kwargs)

    setattr(store, method, wrapped)


class TwoBridges(RuleBasedStateMachine):
    kind = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.clock = ManualClock()
        self.tmp: str | None = None
        if self.kind == "memory":
            shared = MemoryStore()
            stores: list[SessionStore] = [shared, shared]
        else:
            self.tmp = tempfile.mkdtemp(prefix="stateful-")
            ring = Keyring.generate()
            stores = [FileStore(self.tmp, keyring=ring, fsync=False) for _ in range(2)]
        self.bridges = [SessionService(s, POLICY, clock=self.clock) for s in stores]
        self.sessions: dict[str, Model] = {}
        self.gone: list[Model] = []

    def teardown(self) -> None:
        if self.tmp is not None:
            for b in self.bridges:
                b.store.close()
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- the model's view of time ----------------------------------------------------------
    def _surely_active(self, m: Model) -> bool:
        return not m.closed and self.clock.now() - m.last_use < TIMEOUT - GRANULARITY

    def _surely_expired(self, m: Model) -> bool:
        return m.closed or self.clock.now() - m.last_use >= TIMEOUT

    def _live(self) -> list[Model]:
        return [m for m in self.sessions.values() if self._surely_active(m)]

    def _pick(self, data: Any) -> Model:
        return data.draw(st.sampled_from(sorted(self._live(), key=lambda m: m.sid)))

    def _creds(self, m: Model) -> Credentials:
        return Credentials(resume_token=m.token)

    # -- rules -------------------------------------------------------------------------------
    @rule(client=st.sampled_from(CLIENTS), bridge=st.integers(0, 1))
    def create(self, client: str, bridge: int) -> None:
        mine = [m for m in self.sessions.values() if m.client == client]
        certain = [m for m in mine if self._surely_active(m)]
        try:
            created = self.bridges[bridge].create(client)
        except SessionError as exc:
            assert exc.details.get("limit") == LIMIT
            assert len([m for m in mine if not self._surely_expired(m)]) >= LIMIT
            return
        assert len(certain) < LIMIT
        sid = created.session.session_id
        self.sessions[sid] = Model(sid, client, created.resume_token, last_use=self.clock.now())

    @precondition(lambda self: self._live())
    @rule(data=st.data(), bridge=st.integers(0, 1), value=st.integers(0, 99), based=st.booleans())
    def update(self, data: Any, bridge: int, value: int, based: bool) -> None:
        m = self._pick(data)
        key = f"k{value % 4}"
        session = self.bridges[bridge].update(
            m.sid,
            StateUpdate(patches={"session_state": {key: value}}),
            self._creds(m),
            base_revision=m.revision if based else None,
        )
        m.revision += 1
        m.data[key] = value
        m.last_use = self.clock.now()
        assert session.revision == m.revision
        assert session.state.session_state == m.data

    @precondition(lambda self: self._live())
    @rule(data=st.data(), bridge=st.integers(0, 1))
    def restore(self, data: Any, bridge: int) -> None:
        m = self._pick(data)
        restored = self.bridges[bridge].restore(m.sid, self._creds(m))
        assert restored.info.revision == m.revision
        assert restored.info.token_generation == m.generation
        assert restored.snapshot.session().state.session_state == m.data
        m.last_use = self.clock.now()

    @precondition(lambda self: self._live())
    @rule(data=st.data(), bridge=st.integers(0, 1))
    def rotate(self, data: Any, bridge: int) -> None:
        m = self._pick(data)
        info, token = self.bridges[bridge].rotate_token(m.sid, self._creds(m))
        m.generation += 1
        assert info.token_generation == m.generation
        m.dead_tokens.append(m.token)
        m.token = token

    @precondition(lambda self: self._live())
    @rule(data=st.data(), bridge=st.integers(0, 1))
    def restore_racing_rotation(self, data: Any, bridge: int) -> None:
        """A restore reads; the other bridge rotates; the restore writes its access time."""
        m = self._pick(data)
        other = self.bridges[1 - bridge]
        rotated: list[tuple[Any, str]] = []
        _interleave_once(
            self.bridges[bridge].store,
            "save_info",
            lambda: rotated.append(other.rotate_token(m.sid, self._creds(m))),
        )
        # make the access-time write due
        self.clock.advance(GRANULARITY)
        self.bridges[bridge].restore(m.sid, self._creds(m))
        m.last_use = self.clock.now()
        if rotated:
            m.generation += 1
            m.dead_tokens.append(m.token)
            m.token = rotated[0][1]
        else:  # the store wrote nothing (no access write was due): undo the hook
            self._unhook(self.bridges[bridge].store)

    @precondition(lambda self: self._live())
    @rule(data=st.data(), bridge=st.integers(0, 1), a=st.integers(0, 9), b=st.integers(0, 9))
    def update_racing_update(self, data: Any, bridge: int, a: int, b: int) -> None:
        """An update reads; the other bridge's update commits; the first one writes."""
        m = self._pick(data)
        other = self.bridges[1 - bridge]
        _interleave_once(
            self.bridges[bridge].store,
            "save",
            lambda: other.update(m.sid, StateUpdate(patches={"session_state": {"x": a}})),
        )
        session = self.bridges[bridge].update(
            m.sid, StateUpdate(patches={"session_state": {"y": b}}), self._creds(m)
        )
        m.revision += 2  # both applied, in order: none lost
        m.data.update(x=a, y=b)
        m.last_use = self.clock.now()
        assert session.revision == m.revision
        assert session.state.session_state == m.data

    @precondition(lambda self: self._live())
    @rule(data=st.data(), bridge=st.integers(0, 1))
    def stale_base_revision_conflicts(self, data: Any, bridge: int) -> None:
        m = self._pick(data)
        if m.revision < 2:
            return
        # a base before the last change to the same key is a conflict, never a lost update
        key = "k0"
        self.bridges[bridge].update(
            m.sid, StateUpdate(patches={"session_state": {key: -1}}), self._creds(m)
        )
        m.revision += 1
        m.data[key] = -1
        m.last_use = self.clock.now()
        try:
            self.bridges[1 - bridge].update(
                m.sid,
                StateUpdate(patches={"session_state": {key: -2}}),
                self._creds(m),
                base_revision=m.revision - 1,
            )
        except ConflictError:
            return
        raise AssertionError("an update based on a stale revision overwrote a newer change")

    @precondition(lambda self: self._live())
    @rule(data=st.data(), bridge=st.integers(0, 1))
    def close(self, data: Any, bridge: int) -> None:
        m = self._pick(data)
        info = self.bridges[bridge].close(m.sid, self._creds(m))
        m.revision += 1
        m.closed = True
        assert info.revision == m.revision

    @rule(seconds=st.sampled_from([1, 30, GRANULARITY, 2 * GRANULARITY, TIMEOUT + 1]))
    def time_passes(self, seconds: int) -> None:
        self.clock.advance(seconds)

    @rule(bridge=st.integers(0, 1))
    def sweep(self, bridge: int) -> None:
        self.bridges[bridge].cleanup_expired()
        store = self.bridges[bridge].store
        for sid, m in list(self.sessions.items()):
            exists = True
            try:
                store.load_info(sid)
            except SessionNotFound:
                exists = False
            if self._surely_expired(m):
                assert not exists, "the sweep kept a closed or expired session"
            if self._surely_active(m):
                assert exists, "the sweep deleted a session in use"
            if not exists:
                self.gone.append(self.sessions.pop(sid))

    # -- invariants ---------------------------------------------------------------------------
    @invariant()
    def records_match_the_model(self) -> None:
        store = self.bridges[0].store
        for m in self._live():
            info = store.load_info(m.sid)
            assert (info.revision, info.token_generation) == (m.revision, m.generation)

    @invariant()
    def revoked_tokens_stay_dead(self) -> None:
        service = self.bridges[1]
        for m in self._live():
            for token in m.dead_tokens[-2:]:
                try:
                    service.info(m.sid, Credentials(resume_token=token))
                except SessionNotFound:
                    continue
                raise AssertionError("a revoked resume token works again")

    def _unhook(self, store: SessionStore) -> None:
        vars(store).pop("save_info", None)


class TwoBridgesOnFiles(TwoBridges):
    kind = "file"


_SETTINGS = settings(max_examples=EXAMPLES, stateful_step_count=25, deadline=None)
TestTwoBridgesOnMemory = TwoBridges.TestCase
TestTwoBridgesOnMemory.settings = _SETTINGS
TestTwoBridgesOnFiles = TwoBridgesOnFiles.TestCase
TestTwoBridgesOnFiles.settings = settings(_SETTINGS, max_examples=FILE_EXAMPLES)

"""The store conformance suite: what every :class:`~stuisession.stores.SessionStore` must do.

Needs pytest (a test dependency, not a runtime one): import this module only from tests.
A backend author subclasses :class:`StoreConformance` in a test module, with

- a ``make_store`` fixture yielding a fresh, empty store (closed afterwards), and
- ``corrupt(store, session_id, blob)``: overwrite the *stored* snapshot of an existing
  session with raw bytes, bypassing the store's checks (used by the corruption tests)::

    import pytest
    from stuisession.testing.stores import StoreConformance

    class TestMyStore(StoreConformance):
        @pytest.fixture
        def make_store(self, tmp_path):
            with MyStore(...) as s:
                yield s

        def corrupt(self, store, session_id, blob):
            store.raw_put(session_id, blob)

The suite's own backends run it in ``tests/test_store_conformance.py``; see
``docs/backends.md``.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from stuisession.codec.snapshot import Snapshot, SnapshotCodec, parse_header
from stuisession.errors import (
    ConflictError,
    IntegrityError,
    SessionNotFound,
    StateTooLarge,
    ValidationError,
)
from stuisession.ids import new_session_id
from stuisession.keys import Keyring
from stuisession.state import lifecycle
from stuisession.state.model import Session, SessionInfo, SessionState, SessionStatus
from stuisession.stores.base import SessionStore

NOW = 1_700_000_000.0
#: client ids that must work as-is (they end up in index keys of some stores)
ODD_CLIENT_IDS = [
    "client-a",
    "Ünïcødé клиент 🙂",
    "with spaces and {braces} and *globs? [x]",
    "../../etc/passwd",
    "c" * 256,
    "コンシューマー:1",
]


def new(client_id: str = "client-a", *, now: float = NOW, timeout: int = 3600) -> Session:
    return lifecycle.new_session(client_id, now=now, timeout=timeout)


def changed(session: Session, now: float = NOW, **entries: Any) -> Session:
    """The next revision of *session*, with *entries* merged into its session_state."""
    state = SessionState(session_state={**session.state.session_state, **entries})
    return lifecycle.with_state(session, state, now)


def rich_state() -> SessionState:
    # only the open ``session_state`` object: the rest of the state model is not
    # the store's business (stores move sealed bytes)
    return SessionState(
        session_state={
            "text": 'héllo wörld ✓ \u0000 "quoted"',
            "n": [1, 2.5, None, True, -0.0, 10**18],
            "deep": {"a": {"b": [], "c": {}}},
            "registry": {"obj_1": "a Point(3@4)", "obj_2": "'a string'"},
        }
    )


class StoreConcurrencyConformance:
    """The concurrency and size part of the contract (mixed into :class:`StoreConformance`;
    its tests use the ``store`` fixture the subclass provides)."""

    # -- concurrency --------------------------------------------------------------------
    def test_concurrent_cas_has_one_winner_per_revision(self, store: SessionStore) -> None:
        writers, rounds = 4, 6
        s = new()
        store.create(s)
        barrier = threading.Barrier(writers, timeout=30)
        outcomes: list[list[str]] = [[] for _ in range(rounds)]
        errors: list[BaseException] = []
        lock = threading.Lock()

        def writer(n: int) -> None:
            try:
                for r in range(rounds):
                    barrier.wait()
                    base = s if r == 0 else store.load(s.session_id)
                    # every writer of round r read the same revision (r + 1)...
                    barrier.wait()
                    attempt = changed(base, NOW + r + 1, writer=n, round=r)
                    try:
                        store.save(attempt, expected_revision=r + 1)
                        result = f"won:{n}"
                    except ConflictError as exc:
                        result = f"lost:{exc.current_revision}"
                    with lock:
                        outcomes[r].append(result)
            except BaseException as exc:
                errors.append(exc)
                barrier.abort()

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors, errors
        for r, results in enumerate(outcomes):
            winners = [x for x in results if x.startswith("won:")]
            assert len(winners) == 1, (r, results)
            assert sorted(x for x in results if x.startswith("lost:")) == [f"lost:{r + 2}"] * (
                writers - 1
            )
        final = store.load(s.session_id)
        assert final.revision == rounds + 1
        assert final.state.session_state["round"] == rounds - 1
        assert f"won:{final.state.session_state['writer']}" in outcomes[-1]

    def test_concurrent_increments_lose_no_update(self, store: SessionStore) -> None:
        writers, increments = 4, 10
        s = lifecycle.new_session(
            "client-a", now=NOW, timeout=3600, state=SessionState(session_state={"count": 0})
        )
        store.create(s)
        errors: list[BaseException] = []

        def worker() -> None:
            try:
                for _ in range(increments):
                    for _attempt in range(1000):
                        cur = store.load(s.session_id)
                        nxt = changed(cur, NOW, count=cur.state.session_state["count"] + 1)
                        try:
                            store.save(nxt, expected_revision=cur.revision)
                            break
                        except ConflictError:
                            continue
                    else:
                        raise AssertionError("no progress")
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors, errors
        final = store.load(s.session_id)
        assert final.state.session_state["count"] == writers * increments
        assert final.revision == 1 + writers * increments

    # -- size ---------------------------------------------------------------------------
    def test_large_state_roundtrips(self, store: SessionStore) -> None:
        rnd = random.Random(42)
        # ~500 KB of JSON that does not compress away
        registry = {f"obj_{i}": rnd.randbytes(24).hex() for i in range(5000)}
        blocks = [rnd.randbytes(48).hex() for i in range(2500)]
        state = SessionState(
            session_state={"blocks": blocks, "registry": registry, "text": "ü" * 1000}
        )
        s = lifecycle.new_session("client-a", now=NOW, timeout=3600, state=state)
        store.create(s)
        loaded = store.load(s.session_id)
        assert loaded == s
        assert len(store.load_snapshot(s.session_id).state_json()) > 450_000
        s2 = changed(loaded, NOW + 1, extra="x")
        store.save(s2, expected_revision=1)
        assert store.load(s.session_id) == s2
        assert store.load_info(s.session_id) == s2.info


class StoreConformance(StoreConcurrencyConformance):
    """The contract of :class:`~stuisession.stores.SessionStore`; subclass per backend."""

    @pytest.fixture
    def make_store(self) -> Iterator[SessionStore]:
        """A fresh, empty store of the backend under test (override in the subclass)."""
        raise NotImplementedError("a backend's test class provides the `make_store` fixture")

    @pytest.fixture
    def store(self, make_store: SessionStore) -> SessionStore:
        """The store every test of the suite uses (the backend's ``make_store``)."""
        return make_store

    def corrupt(self, store: Any, session_id: str, blob: bytes) -> None:
        """Replace the stored snapshot of *session_id* with *blob* (backend-specific)."""
        raise NotImplementedError

    # -- create / load ------------------------------------------------------------------
    def test_create_load_roundtrip(self, store: SessionStore) -> None:
        s = lifecycle.new_session("client-a", now=NOW, timeout=600, state=rich_state())
        store.create(s)
        loaded = store.load(s.session_id)
        assert loaded == s
        assert loaded.state == rich_state()
        assert store.load_info(s.session_id) == s.info
        snap = store.load_snapshot(s.session_id)
        assert isinstance(snap, Snapshot)
        assert snap.info == s.info
        assert snap.session() == s

    def test_roundtrip_keeps_every_field(self, store: SessionStore) -> None:
        s = lifecycle.new_session("client-a", now=NOW + 0.125, timeout=7, absolute_lifetime=86400)
        s = lifecycle.close(s, NOW + 1)
        store.create(s)
        assert store.load(s.session_id) == s
        assert store.load(s.session_id).status is SessionStatus.CLOSED

    def test_create_existing_id_conflicts(self, store: SessionStore) -> None:
        s = new()
        store.create(s)
        other = lifecycle.new_session(
            "intruder", now=NOW + 5, timeout=10, session_id=s.session_id, state=rich_state()
        )
        with pytest.raises(ConflictError):
            store.create(other)
        assert store.load(s.session_id) == s

    def test_load_missing(self, store: SessionStore) -> None:
        sid = new_session_id()
        with pytest.raises(SessionNotFound):
            store.load(sid)
        with pytest.raises(SessionNotFound):
            store.load_info(sid)
        with pytest.raises(SessionNotFound):
            store.load_snapshot(sid)

    @pytest.mark.parametrize(
        "bad", ["", "session_x", "../" + "a" * 50, "session_" + "a" * 42 + "}"]
    )
    def test_invalid_ids_are_refused(self, store: SessionStore, bad: str) -> None:
        for op in (store.load, store.load_info, store.delete):
            with pytest.raises(ValidationError):
                op(bad)

    def test_max_size_refuses_and_writes_nothing(self, store: SessionStore) -> None:
        s = lifecycle.new_session("client-a", now=NOW, timeout=60, state=rich_state())
        with pytest.raises(StateTooLarge):
            store.create(s, max_size=50)
        with pytest.raises(SessionNotFound):
            store.load(s.session_id)
        store.create(s)
        with pytest.raises(StateTooLarge):
            store.save(changed(s, big="x" * 5000), expected_revision=1, max_size=300)
        assert store.load(s.session_id) == s

    # -- save / compare-and-swap --------------------------------------------------------
    def test_save_with_expected_revision(self, store: SessionStore) -> None:
        s1 = new()
        store.create(s1)
        s2 = changed(s1, NOW + 1, step=2)
        store.save(s2, expected_revision=1)
        assert store.load(s1.session_id) == s2
        s3 = changed(s2, NOW + 2, step=3)
        store.save(s3, expected_revision=2)
        loaded = store.load(s1.session_id)
        assert loaded == s3
        assert loaded.revision == 3
        assert store.load_info(s1.session_id) == s3.info

    def test_stale_revision_conflicts_and_changes_nothing(self, store: SessionStore) -> None:
        s1 = new()
        store.create(s1)
        s2 = changed(s1, NOW + 1, winner=True)
        store.save(s2, expected_revision=1)
        loser = changed(s1, NOW + 2, winner=False)  # also based on revision 1
        with pytest.raises(ConflictError) as info:
            store.save(loser, expected_revision=1)
        assert info.value.current_revision == 2
        assert info.value.details["current_revision"] == 2
        assert info.value.retryable
        assert store.load(s1.session_id) == s2
        with pytest.raises(ConflictError) as info:
            store.save(changed(s2, NOW + 3), expected_revision=7)
        assert info.value.current_revision == 2
        assert store.load(s1.session_id) == s2

    def test_save_on_missing_or_deleted(self, store: SessionStore) -> None:
        s = new()
        with pytest.raises(SessionNotFound):
            store.save(changed(s), expected_revision=1)
        store.create(s)
        assert store.delete(s.session_id)
        with pytest.raises(SessionNotFound):
            store.save(changed(s), expected_revision=1)
        with pytest.raises(SessionNotFound):
            store.load(s.session_id)

    def test_delete_true_then_false(self, store: SessionStore) -> None:
        a, b = new(), new()
        store.create(a)
        store.create(b)
        assert store.delete(a.session_id) is True
        assert store.delete(a.session_id) is False
        assert store.delete(new_session_id()) is False
        with pytest.raises(SessionNotFound):
            store.load_info(a.session_id)
        assert store.load(b.session_id) == b
        assert [i.session_id for i in store.iter_infos()] == [b.session_id]
        store.create(a)  # the id can be used again
        assert store.load(a.session_id) == a

    def test_save_info_rewrites_only_the_record(self, store: SessionStore) -> None:
        s = lifecycle.new_session("client-a", now=NOW, timeout=600, state=rich_state())
        store.create(s)
        snap = store.load_snapshot(s.session_id)
        touched = lifecycle.touch(snap.info, NOW + 100)
        store.save_info(snap, touched, expected_revision=s.revision)
        loaded = store.load(s.session_id)
        assert loaded.info == touched
        assert loaded.revision == s.revision
        assert loaded.last_accessed == NOW + 100
        assert loaded.state == s.state
        # a second access at the same revision is fine; a stale one is not
        snap2 = store.load_snapshot(s.session_id)
        store.save_info(snap2, lifecycle.touch(snap2.info, NOW + 200), expected_revision=1)
        s2 = changed(loaded, NOW + 300, more=1)
        store.save(s2, expected_revision=1)
        with pytest.raises(ConflictError) as info:
            store.save_info(snap2, lifecycle.touch(snap2.info, NOW + 400), expected_revision=1)
        assert info.value.current_revision == 2
        assert store.load(s.session_id) == s2

    def test_load_info_does_not_read_the_state(
        self, store: SessionStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        s = lifecycle.new_session("client-a", now=NOW, timeout=600, state=rich_state())
        store.create(s)

        def refuse(*_: object) -> bytes:
            raise AssertionError("the state was decrypted or decompressed")

        monkeypatch.setattr(SnapshotCodec, "unseal_state", refuse)
        assert store.load_info(s.session_id) == s.info
        assert [i.session_id for i in store.list_by_client("client-a")] == [s.session_id]
        assert store.statistics(NOW).total_sessions == 1
        assert [i.session_id for i in store.iter_expired(NOW + 601)] == [s.session_id]

    # -- listing, expiry, statistics ----------------------------------------------------
    def test_list_by_client(self, store: SessionStore) -> None:
        rnd = random.Random(5)
        created: dict[str, list[Session]] = {c: [] for c in ODD_CLIENT_IDS}
        plan = [(c, NOW + rnd.randrange(1000)) for c in ODD_CLIENT_IDS for _ in range(3)]
        rnd.shuffle(plan)  # created out of order
        for client, at in plan:
            s = new(client, now=at)
            store.create(s)
            created[client].append(s)
        for client, sessions in created.items():
            listed = store.list_by_client(client)
            assert all(isinstance(i, SessionInfo) for i in listed)
            expected = sorted(sessions, key=lambda x: (x.created_at, x.session_id))
            assert [i.session_id for i in listed] == [x.session_id for x in expected]
            assert [i.created_at for i in listed] == sorted(i.created_at for i in listed)
            assert {i.client_id for i in listed} == {client}
        assert store.list_by_client("nobody") == []
        assert store.list_by_client("client-A") == []  # exact match only
        with pytest.raises(ValidationError):
            store.list_by_client("bad\x00client")

    def test_list_by_client_follows_deletes_and_saves(self, store: SessionStore) -> None:
        a1, a2 = new("alice", now=NOW), new("alice", now=NOW + 1)
        for s in (a1, a2):
            store.create(s)
        store.delete(a1.session_id)
        a2b = changed(a2, NOW + 5, x=1)
        store.save(a2b, expected_revision=1)
        assert store.list_by_client("alice") == [a2b.info]

    def test_iter_expired(self, store: SessionStore) -> None:
        short = new("a", timeout=60)
        long = new("a", timeout=86400)
        closed = lifecycle.close(new("b", timeout=86400), NOW + 1)
        capped = lifecycle.new_session("c", now=NOW, timeout=86400, absolute_lifetime=120)
        for s in (short, long, closed, capped):
            store.create(s)
        assert {i.session_id for i in store.iter_expired(NOW + 10)} == {closed.session_id}
        assert {i.session_id for i in store.iter_expired(NOW + 61)} == {
            short.session_id,
            closed.session_id,
        }
        assert {i.session_id for i in store.iter_expired(NOW + 121)} == {
            short.session_id,
            closed.session_id,
            capped.session_id,
        }
        assert len(list(store.iter_expired(NOW + 86401))) == 4
        # a touch slides the idle expiry
        snap = store.load_snapshot(short.session_id)
        store.save_info(snap, lifecycle.touch(snap.info, NOW + 50), expected_revision=1)
        assert short.session_id not in {i.session_id for i in store.iter_expired(NOW + 61)}

    def test_statistics(self, store: SessionStore) -> None:
        empty = store.statistics(NOW)
        assert (empty.total_sessions, empty.active_sessions, empty.clients) == (0, 0, 0)
        sessions = [
            new("alice", timeout=60),
            new("alice", timeout=3600),
            new("bob", timeout=3600),
            new("carol", timeout=60),
            lifecycle.close(new("dave", timeout=3600), NOW),
        ]
        for s in sessions:
            store.create(s)
        stats = store.statistics(NOW + 1)
        assert (stats.total_sessions, stats.active_sessions, stats.clients) == (5, 4, 3)
        stats = store.statistics(NOW + 61)
        assert (stats.total_sessions, stats.active_sessions, stats.clients) == (5, 2, 2)
        if stats.stored_bytes is not None:
            assert stats.stored_bytes > 0
        store.delete(sessions[0].session_id)
        assert store.statistics(NOW + 1).total_sessions == 4
        assert len(list(store.iter_infos())) == 4

    # -- integrity ----------------------------------------------------------------------
    def _versions(self, store: SessionStore) -> list[Session]:
        """A session saved twice: every version that was ever written."""
        s1 = lifecycle.new_session("client-a", now=NOW, timeout=3600, state=rich_state())
        store.create(s1)
        s2 = changed(s1, NOW + 1, gen=2)
        store.save(s2, expected_revision=1)
        s3 = changed(s2, NOW + 2, gen=3)
        store.save(s3, expected_revision=2)
        return [s1, s2, s3]

    @pytest.mark.parametrize(
        "damage", ["garbage", "empty", "truncated", "flipped_payload", "flipped_head", "trailing"]
    )
    def test_corrupt_snapshot_is_never_served(self, store: SessionStore, damage: str) -> None:
        versions = self._versions(store)
        sid = versions[0].session_id
        good = store.load_snapshot(sid).blob
        rnd = random.Random(damage)
        if damage == "garbage":
            bad = rnd.randbytes(len(good))
        elif damage == "empty":
            bad = b""
        elif damage == "truncated":
            bad = good[: len(good) // 2]
        elif damage == "trailing":
            bad = good + b"\x00"
        else:
            meta = parse_header(good).meta_offset + 5
            pos = len(good) - 40 if damage == "flipped_payload" else meta
            bad = good[:pos] + bytes([good[pos] ^ 0x10]) + good[pos + 1 :]
        self.corrupt(store, sid, bad)
        try:
            loaded = store.load(sid)
        except IntegrityError:
            pass
        else:  # a store with backups may bring back an earlier good generation
            assert loaded in versions
        try:
            info = store.load_info(sid)
        except IntegrityError:
            pass
        else:
            assert info in [v.info for v in versions]
        # listing never fails because of one bad snapshot
        for listed in store.list_by_client("client-a"):
            assert listed in [v.info for v in versions]
        store.statistics(NOW)

    def test_snapshot_of_another_session_is_refused(self, store: SessionStore) -> None:
        a = lifecycle.new_session("alice", now=NOW, timeout=3600, state=rich_state())
        b = new("mallory")
        store.create(a)
        store.create(b)
        self.corrupt(store, b.session_id, store.load_snapshot(a.session_id).blob)
        with pytest.raises(IntegrityError):
            store.load(b.session_id)
        with pytest.raises(IntegrityError):
            store.load_info(b.session_id)
        assert store.load(a.session_id) == a
        assert [i.session_id for i in store.list_by_client("mallory")] == []

    def test_snapshot_sealed_with_another_key_is_refused(self, store: SessionStore) -> None:
        s = new()
        store.create(s)
        foreign = SnapshotCodec(Keyring.generate()).encode(s)
        self.corrupt(store, s.session_id, foreign)
        with pytest.raises(IntegrityError):
            store.load(s.session_id)


__all__ = ["StoreConcurrencyConformance", "StoreConformance"]

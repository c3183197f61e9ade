"""SessionService under concurrency: no lost acknowledged update, no limit overshoot."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from stuisession import (
    ConflictError,
    ManualClock,
    MemoryStore,
    Policy,
    SessionError,
    SessionNotFound,
    SessionService,
)
from stuisession.state.updates import StateUpdate

THREADS = 8


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def service(store: MemoryStore, clock: ManualClock) -> SessionService:
    return SessionService(store, Policy(rate_limit=None, max_update_retries=10_000), clock=clock)


@pytest.fixture
def sid(service: SessionService) -> str:
    return service.create("alice").session.session_id


def merge(patch: dict[str, Any]) -> StateUpdate:
    """``update_session_state`` with ``mode: "merge"``."""
    return StateUpdate(patches={"session_state": patch})


def replace(state: dict[str, Any]) -> StateUpdate:
    """``update_session_state`` with the default ``mode: "replace"``."""
    return StateUpdate(patches={"session_state": state}, replace=frozenset({"session_state"}))


def run_threads(n: int, target: Callable[[int], None]) -> None:
    """Run *target(i)* in *n* threads released together; re-raise the first failure."""
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            target(i)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a worker hung"
    if errors:
        raise errors[0]


def test_concurrent_merges_of_distinct_keys_lose_nothing(
    service: SessionService, store: MemoryStore, sid: str
) -> None:
    per_thread = 25
    acked: list[tuple[str, int]] = []
    lock = threading.Lock()

    def writer(i: int) -> None:
        for j in range(per_thread):
            key = f"t{i}-{j}"
            session = service.update(sid, merge({key: {"writer": i, "n": j}}))
            assert session.state.session_state[key] == {"writer": i, "n": j}
            with lock:
                acked.append((key, session.revision))

    run_threads(THREADS, writer)
    final = store.load(sid)
    updates = THREADS * per_thread
    assert len(acked) == updates
    assert final.revision == 1 + updates
    assert set(final.state.session_state) == {key for key, _ in acked}
    for i in range(THREADS):
        for j in range(per_thread):
            assert final.state.session_state[f"t{i}-{j}"] == {"writer": i, "n": j}
    # every acknowledged update got its own revision
    assert sorted(rev for _, rev in acked) == list(range(2, updates + 2))
    assert final.state.metadata.updates == updates


def test_with_default_retries_every_acknowledged_merge_is_kept(
    store: MemoryStore, clock: ManualClock, sid: str
) -> None:
    """Under the default retry budget an update may be refused (Conflict), but an
    acknowledged one is never lost and a refused one never half-applied."""
    service = SessionService(store, Policy(rate_limit=None), clock=clock)
    acked: list[str] = []
    refused: list[str] = []
    lock = threading.Lock()

    def writer(i: int) -> None:
        for j in range(25):
            key = f"t{i}-{j}"
            try:
                service.update(sid, merge({key: j}))
            except ConflictError:
                with lock:
                    refused.append(key)
            else:
                with lock:
                    acked.append(key)

    run_threads(THREADS, writer)
    final = store.load(sid)
    assert final.revision == 1 + len(acked)
    assert set(final.state.session_state) == set(acked)
    assert not set(refused) & set(final.state.session_state)


def test_concurrent_merges_into_one_nested_object(service: SessionService, sid: str) -> None:
    service.update(sid, replace({"vars": {}}))

    def writer(i: int) -> None:
        for j in range(10):
            service.update(sid, merge({"vars": {f"v{i}_{j}": j}}))

    run_threads(THREADS, writer)
    final = service.load(sid)
    assert len(final.state.session_state["vars"]) == THREADS * 10
    assert final.revision == 2 + THREADS * 10


def test_stale_writers_get_conflicts(service: SessionService, sid: str) -> None:
    service.update(sid, replace({"owner": None}))
    base = service.load(sid).revision
    won: list[int] = []
    conflicts: list[ConflictError] = []
    lock = threading.Lock()

    def writer(i: int) -> None:
        try:
            service.update(sid, replace({"owner": i}), base_revision=base)
        except ConflictError as exc:
            with lock:
                conflicts.append(exc)
        else:
            with lock:
                won.append(i)

    run_threads(THREADS, writer)
    assert len(won) == 1
    assert len(conflicts) == THREADS - 1
    final = service.load(sid)
    assert final.revision == base + 1
    assert final.state.session_state == {"owner": won[0]}
    for exc in conflicts:
        assert exc.error_code == "Conflict"
        assert exc.current_revision == base + 1
        assert exc.details["current_revision"] == base + 1


def test_stale_merges_of_the_same_key_conflict(service: SessionService, sid: str) -> None:
    base = service.load(sid).revision
    outcomes: list[str] = []
    lock = threading.Lock()

    def writer(i: int) -> None:
        try:
            service.update(sid, merge({"shared": i}), base_revision=base)
            result = "ok"
        except ConflictError:
            result = "conflict"
        with lock:
            outcomes.append(result)

    run_threads(THREADS, writer)
    assert outcomes.count("ok") == 1
    assert outcomes.count("conflict") == THREADS - 1
    assert service.load(sid).revision == base + 1


def test_stale_merges_of_distinct_keys_all_apply(service: SessionService, sid: str) -> None:
    base = service.load(sid).revision

    def writer(i: int) -> None:
        service.update(sid, merge({f"own-{i}": i}), base_revision=base)

    run_threads(THREADS, writer)
    final = service.load(sid)
    assert final.revision == base + THREADS
    assert final.state.session_state == {f"own-{i}": i for i in range(THREADS)}


@pytest.mark.parametrize("limit", [1, 3, 5])
def test_concurrent_creates_respect_the_limit(
    store: MemoryStore, clock: ManualClock, limit: int
) -> None:
    service = SessionService(
        store, Policy(rate_limit=None, max_sessions_per_client=limit), clock=clock
    )
    created: list[str] = []
    refused: list[SessionError] = []
    lock = threading.Lock()

    def creator(i: int) -> None:
        for _ in range(3):
            try:
                sid = service.create("alice").session.session_id
            except SessionError as exc:
                with lock:
                    refused.append(exc)
            else:
                with lock:
                    created.append(sid)

    run_threads(THREADS, creator)
    assert len(created) == limit
    assert len(refused) == THREADS * 3 - limit
    assert all(exc.details.get("limit") == limit for exc in refused)
    assert sorted(i.session_id for i in store.list_by_client("alice")) == sorted(created)


def test_concurrent_creates_of_different_clients_are_independent(
    store: MemoryStore, clock: ManualClock
) -> None:
    service = SessionService(store, Policy(rate_limit=None, max_sessions_per_client=2), clock=clock)

    def creator(i: int) -> None:
        for _ in range(2):
            service.create(f"client-{i}")

    run_threads(THREADS, creator)
    for i in range(THREADS):
        assert len(store.list_by_client(f"client-{i}")) == 2
    assert service.statistics().total_sessions == THREADS * 2


def test_close_races_with_updates(service: SessionService, sid: str) -> None:
    """Once close returns, no later update is acknowledged; nothing raises but the
    documented errors."""
    acked: list[int] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        if i == 0:
            service.close(sid)
            return
        for j in range(20):
            try:
                session = service.update(sid, merge({f"k{i}-{j}": j}))
            except SessionNotFound as exc:
                assert exc.details["reason"] == "closed"
                return
            with lock:
                acked.append(session.revision)

    run_threads(THREADS, worker)
    final = service.info(sid)
    assert final.status.value == "closed"
    # the close is the last revision: every acknowledged update came before it
    assert final.revision == 1 + len(acked) + 1
    assert all(rev < final.revision for rev in acked)

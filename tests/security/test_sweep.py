"""The expiry sweep works in bounded batches, keeps memory flat and never stalls
live requests (small scale here; benchmarks/bench_sweep.py runs 100,000 sessions)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from stuisession import FileStore, ManualClock, Policy, ProtocolHandler
from stuisession.errors import StorageError
from stuisession.security.audit import AuditLog
from stuisession.service.core import SessionService
from stuisession.state import lifecycle
from volume import examples

# sessions in the bounded-sweep test: 2,000 in make faults, 600 in make test
SWEEP_SESSIONS = examples(full=2000, quick=600)


def populate(store: FileStore, clock: ManualClock, total: int, expired_share: float) -> list[str]:
    """Sessions of which *expired_share* are already expired; returns the live ids."""
    live = []
    now = clock.now()
    for i in range(total):
        expired = i < total * expired_share
        created = now - 7200 if expired else now
        s = lifecycle.new_session(f"c{i % 50}", now=created, timeout=3600)
        store.create(s)
        if not expired:
            live.append(s.session_id)
    return live


@pytest.mark.volume
def test_sweep_is_bounded_and_live_requests_interleave(tmp_path: Path) -> None:
    clock = ManualClock()
    store = FileStore(tmp_path / "s", fsync=False)
    audit = AuditLog(tmp_path / "audit.log", keyring=store.codec.keyring, clock=clock, fsync=False)
    batch = SWEEP_SESSIONS // 20  # at least 20 steps whatever the volume
    handler = ProtocolHandler(
        store, Policy(rate_limit=None, sweep_batch=batch), clock=clock, audit=audit
    )
    live = populate(store, clock, SWEEP_SESSIONS, 0.9)
    expired = SWEEP_SESSIONS - len(live)
    service = handler.service
    steps = removed = 0
    tracemalloc.start()
    peaks = []
    while True:
        tracemalloc.reset_peak()
        step = service.sweep_step()
        peaks.append(tracemalloc.get_traced_memory()[1])
        steps += 1
        removed += step.removed
        assert step.scanned <= batch  # each step is bounded
        # a live request between two steps is served normally
        sid = live[steps % len(live)]
        reply = handler.handle(
            {"id": str(steps), "command": "restore_session", "parameters": {"session_id": sid}}
        )
        assert reply["status"] == "success", reply
        if step.done:
            break
    tracemalloc.stop()
    assert removed == expired
    assert steps >= 20
    # flat memory: a late step needs no more than an early one (plus slack for
    # other threads of the test process), i.e. nothing accumulates with the
    # number of sessions examined
    assert max(peaks[-5:]) < 4 * max(peaks[:5]) + 3_000_000
    assert sorted(store._ids()) == sorted(live)
    lines = (tmp_path / "audit.log").read_text().splitlines()
    assert sum('"event":"expire"' in x for x in lines) == expired


def test_retention_deletes_long_idle_sessions_even_with_a_long_timeout(tmp_path: Path) -> None:
    clock = ManualClock()
    store = FileStore(tmp_path / "s", fsync=False)
    policy = Policy(
        rate_limit=None,
        session_timeout=40 * 86400,
        retention=40 * 86400,
        absolute_lifetime=None,  # this test is about retention alone
    )
    handler = ProtocolHandler(store, policy, clock=clock)
    sid = handler.handle(
        {"id": "1", "command": "create_session", "parameters": {"client_id": "a"}}
    )["result"]["session_id"]
    clock.advance(30 * 86400)
    assert handler.cleanup_expired() == 0
    clock.advance(11 * 86400)
    assert handler.cleanup_expired() == 1
    assert list(store._ids()) == []
    assert not list((tmp_path / "s").rglob(f"{sid}*"))  # backups too


def test_a_storage_error_mid_sweep_restarts_the_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    clock = ManualClock()
    service = SessionService(
        FileStore(tmp_path, fsync=False), Policy(rate_limit=None, session_timeout=60), clock=clock
    )
    for i in range(6):
        service.create(f"c{i}")
    clock.advance(120)  # all expired
    real = service.store.load_info
    calls = {"n": 0}

    def flaky(sid: str) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise StorageError("simulated read failure")
        return real(sid)

    monkeypatch.setattr(service.store, "load_info", flaky)
    with pytest.raises(StorageError):
        service.sweep_step(max_items=10)
    step = service.sweep_step(max_items=10)
    # the first step deleted one session before the failure; the next runs a full
    # pass over the other five (not an exhausted cursor that scans nothing)
    assert step.done and step.scanned == 5
    assert service.store.statistics(clock.now()).total_sessions == 0

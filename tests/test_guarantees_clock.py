"""Clock faults never delete live sessions (issue 14, item 6).

``ManualClock.advance`` is real time passing (the monotonic clock moves too);
``ManualClock.step`` (and ``advance`` by a negative amount) is a fault: the
wall clock jumps while no real time passes.
"""

from __future__ import annotations

import logging

import pytest

from stuisession import ManualClock, MemoryStore, Policy
from stuisession.errors import SessionNotFound
from stuisession.service.core import SessionService

TIMEOUT = 600
DAY = 86_400
POLICY = Policy(session_timeout=TIMEOUT, rate_limit=None, max_creates_per_second=None)


def _alive(service: SessionService, sid: str) -> bool:
    try:
        service.restore(sid)
    except SessionNotFound:
        return False
    return True


def test_forward_step_longer_than_the_cleanup_interval_deletes_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    service = SessionService(MemoryStore(), POLICY, clock=clock)
    sids = [service.create(f"c{i}").session.session_id for i in range(3)]
    assert service.cleanup_expired() == 0
    clock.step(10 * POLICY.cleanup_interval + TIMEOUT)  # every session looks idle
    with caplog.at_level(logging.WARNING, logger="stuisession.service"):
        assert service.cleanup_expired() == 0
    assert "refuses to delete" in caplog.text and "stepped" in caplog.text
    clock.step(-(10 * POLICY.cleanup_interval + TIMEOUT))  # corrected
    assert all(_alive(service, sid) for sid in sids)
    # real idleness still expires them: the sweep is not simply switched off
    clock.advance(TIMEOUT + 1)
    assert service.cleanup_expired() == 3


def test_a_bridge_40_days_ahead_deletes_nothing_another_bridge_serves(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryStore()
    good, ahead = ManualClock(), ManualClock()
    ahead.step(40 * DAY)
    serving = SessionService(store, POLICY, clock=good)
    sweeping = SessionService(store, POLICY, clock=ahead)
    assert sweeping.cleanup_expired() == 0  # its first pass, before any session exists
    sids = [serving.create(f"c{i}").session.session_id for i in range(4)]
    with caplog.at_level(logging.WARNING, logger="stuisession.service"):
        for _ in range(6):
            for clock in (good, ahead):  # real time passes for both
                clock.advance(POLICY.cleanup_interval)
            for sid in sids[:2]:
                serving.update(sid, _note())  # in use on the good bridge
            for sid in sids[2:]:
                assert _alive(serving, sid)
            assert sweeping.cleanup_expired() == 0
    assert "ahead of the bridges writing the sessions" in caplog.text
    assert all(_alive(serving, sid) for sid in sids)


def _note():  # type: ignore[no-untyped-def]
    from stuisession.state.updates import StateUpdate

    return StateUpdate(patches={"session_state": {"seen": True}})


def test_backward_excursion_longer_than_the_idle_timeout_keeps_sessions_in_use() -> None:
    clock = ManualClock()
    service = SessionService(MemoryStore(), POLICY, clock=clock)
    used = service.create("used").session.session_id
    idle = service.create("idle").session.session_id
    assert service.cleanup_expired() == 0
    clock.advance(-3 * TIMEOUT)  # the wall clock steps back three idle timeouts
    created = service.create("created-during").session.session_id
    for _ in range(int(3 * TIMEOUT / 100)):  # three timeouts of real time, used throughout
        clock.advance(100)
        assert _alive(service, used)
        assert _alive(service, created)
        assert service.cleanup_expired() == 0
    clock.step(3 * TIMEOUT)  # corrected: the wall clock shows the real time again
    assert _alive(service, used)
    assert _alive(service, created)
    # the session nobody used for three timeouts of real time did expire
    assert not _alive(service, idle)
    assert service.cleanup_expired() == 1
    assert _alive(service, used) and _alive(service, created)

"""The wall clock jumping backwards and forwards (a ManualClock drives the handler).

Observed and checked behaviour:

- backwards: nothing expires and nothing is lost. Stored times never go
  backwards (``last_accessed``, ``last_modified`` and ``expires_at`` are
  clamped to their previous values), revisions keep increasing, and deltas
  (``since_revision``) still work. Sessions *created* during the jump get an
  earlier ``created_at`` than older ones (so ``list_client_sessions``, oldest
  first, lists them first), and ``time_until_expiry`` may exceed the timeout
  by the size of the jump. A session that only ever saw the clock while it
  was behind expires when the clock is corrected if the correction is longer
  than its idle timeout (for it, the correction is a forward jump);
- forwards past the idle timeout (or the absolute lifetime, or retention):
  the session is ``SessionNotFound`` with ``details.reason = "expired"``,
  described as expired by ``get_session_info``, and the sweep deletes exactly
  the expired and closed sessions. Expiry is evaluated, not recorded: if the
  clock comes back before a sweep ran, the session is usable again, intact;
- the rate limiter never raises anything but ``RateLimited``. On an injected
  clock it never lets time run backwards: a client that had used up its burst
  before a backwards jump (or a forward spike and its correction) waits until
  the clock is back where it was, a pause as long as the jump. On the system
  clock it runs on monotonic time and ignores wall-clock jumps. A request
  refused with ``RateLimited`` and resent after ``retry_after`` is served;
- the reply cache (time.monotonic) is untouched by jumps: a resent request is
  never applied twice.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faultlib import check_reply, scratch_dir

from stuisession import (
    FileStore,
    ManualClock,
    MemoryStore,
    Policy,
    ProtocolHandler,
    SystemClock,
)
from stuisession.keys import ENV_KEYRING
from stuisession.security.identity import Caller

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
TIMEOUT = 600
DAY = 86_400


@pytest.fixture(autouse=True)
def _no_env_keyring(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_KEYRING, raising=False)


class Client:
    """A handler on a ManualClock, with fresh request ids."""

    def __init__(self, handler: ProtocolHandler, clock: ManualClock) -> None:
        self.handler = handler
        self.clock = clock
        self.n = 0

    def send(self, command: str, **params: Any) -> dict[str, Any]:
        self.n += 1
        # a trusted caller: these tests are about clocks, not access control
        message = {"id": f"c{self.n}", "command": command, "parameters": params}
        return check_reply(self.handler.handle(message, caller=Caller.local()))

    def ok(self, command: str, **params: Any) -> dict[str, Any]:
        reply = self.send(command, **params)
        assert reply["status"] == "success", reply
        result: dict[str, Any] = reply["result"]
        return result

    def create(self, client_id: str = "alice") -> str:
        sid: str = self.ok("create_session", client_id=client_id)["session_id"]
        return sid

    def state(self, sid: str) -> dict[str, Any]:
        result = self.ok("restore_session", session_id=sid)
        state: dict[str, Any] = result["session_state"]
        return state

    def info(self, sid: str) -> dict[str, Any]:
        return self.ok("get_session_info", session_id=sid)


@pytest.fixture(params=["memory", "file"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """``make(policy) -> Client`` over a MemoryStore or a FileStore, clock at T0."""
    with scratch_dir(tmp_path / "scratch") as d:
        count = iter(range(1000))

        def factory(policy: Policy) -> Client:
            clock = ManualClock(T0)
            if request.param == "memory":
                store: Any = MemoryStore()
            else:
                store = FileStore(d / f"store{next(count)}", lock_stripes=4)
            return Client(ProtocolHandler(store, policy, clock=clock), clock)

        yield factory


def policy(**overrides: Any) -> Policy:
    options: dict[str, Any] = {
        "session_timeout": TIMEOUT,
        "rate_limit": None,
        "touch_granularity": 60,
    }
    options.update(overrides)
    return Policy(**options)


# -- backwards -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "jump",
    [-1.0, -(TIMEOUT + 1.0), -10.0 * DAY, "epoch"],
    ids=["1s", "past-timeout", "10-days", "to-1970"],
)
def test_backwards_jump_loses_and_expires_nothing(make: Any, jump: float | str) -> None:
    c = make(policy())
    a = c.create()
    c.clock.advance(100)
    first = c.ok("update_session_state", session_id=a, state_data={"x": 1}, mode="merge")
    before = c.info(a)
    if jump == "epoch":
        c.clock.set(0)  # an RTC that lost its battery
    else:
        assert isinstance(jump, float)
        c.clock.advance(jump)

    # nothing expired, nothing lost
    info = c.info(a)
    assert info["is_active"] and not info["is_expired"] and info["status"] == "active"
    assert c.state(a) == {"x": 1}
    # stored times never go backwards
    assert info["last_accessed"] >= before["last_accessed"]
    assert info["expires_at"] >= before["expires_at"]
    # observed: time_until_expiry counts from the earlier "now" (it can exceed the timeout)
    assert info["time_until_expiry"] >= before["time_until_expiry"]

    # updates keep working; revisions increase; last_modified does not go back
    second = c.ok("update_session_state", session_id=a, state_data={"y": 2}, mode="merge")
    assert second["revision"] == first["revision"] + 1
    assert second["last_modified"] >= first["last_modified"]
    assert second["session_state"] == {"x": 1, "y": 2}
    after = c.info(a)
    assert after["last_accessed"] >= before["last_accessed"]
    assert after["expires_at"] >= before["expires_at"]
    # a delta since the first update still holds exactly the second one
    delta = c.ok("restore_session", session_id=a, since_revision=first["revision"])
    assert delta["delta"] is True and delta["revision"] == second["revision"]

    # a session created now may be "older" than the first one: listed by created_at
    b_created = c.clock.now()
    b = c.create()
    listed = [s["session_id"] for s in c.ok("list_client_sessions", client_id="alice")["sessions"]]
    assert sorted(listed) == sorted([a, b])
    jumped_past_creation = b_created < T0
    assert listed == ([b, a] if jumped_past_creation else [a, b])
    assert (c.info(b)["created_at"] < info["created_at"]) == jumped_past_creation

    # the sweep removes nothing
    assert c.handler.cleanup_expired() == 0
    assert c.state(a) == {"x": 1, "y": 2} and c.state(b) == {}

    # the clock is corrected: the session used before the jump lives on with its data
    c.clock.set(T0 + 100 + TIMEOUT / 2)
    assert c.state(a) == {"x": 1, "y": 2}
    # b only ever saw the clock that was behind: for b the correction is a forward
    # jump, and b expires if that jump is longer than its idle timeout (observed)
    b_expired = b_created + TIMEOUT <= c.clock.now()
    assert c.info(b)["is_expired"] == b_expired
    if not b_expired:
        assert c.state(b) == {}
    assert c.handler.cleanup_expired() == int(b_expired)
    assert c.state(a) == {"x": 1, "y": 2}


def test_backwards_jump_then_idle_expiry_counts_from_the_latest_use(make: Any) -> None:
    """Uses during a backwards jump count as uses at the latest time seen."""
    c = make(policy())
    a = c.create()
    c.clock.advance(-3600)
    for _ in range(5):
        c.clock.advance(100)
        assert c.state(a) == {}
    # back at T0 (the jump is over): the session was last used "at T0"
    c.clock.set(T0 + TIMEOUT - 1)
    assert c.state(a) == {}
    c.clock.set(T0 + 2 * TIMEOUT + 1)
    reply = c.send("restore_session", session_id=a)
    assert reply["error_code"] == "SessionNotFound"
    assert reply["details"]["reason"] == "expired"


# -- forwards --------------------------------------------------------------------------------
def test_forward_jump_expires_only_idle_sessions(make: Any) -> None:
    c = make(policy())
    idle = c.create()
    c.ok("update_session_state", session_id=idle, state_data={"idle": True})
    closed = c.create()
    c.ok("close_session", session_id=closed)
    c.clock.advance(TIMEOUT / 2)
    busy = c.create()
    c.ok("update_session_state", session_id=busy, state_data={"busy": True})
    c.clock.advance(TIMEOUT / 2 + 1)  # idle: TIMEOUT + 1 since last use; busy: TIMEOUT/2 + 1

    calls: list[tuple[str, dict[str, Any]]] = [
        ("restore_session", {}),
        ("update_session_state", {"state_data": {"late": 1}}),
        ("save_context", {"tool_id": "t", "variables": {"v": 1}}),
        ("load_context", {"tool_id": "t"}),
        ("rotate_credentials", {}),
    ]
    for command, params in calls:
        reply = c.send(command, session_id=idle, **params)
        assert reply["error_code"] == "SessionNotFound", (command, reply)
        assert reply["details"]["reason"] == "expired", (command, reply)
    info = c.info(idle)
    assert info["is_expired"] and not info["is_active"] and info["status"] == "expired"
    assert info["time_until_expiry"] == 0
    listed = {
        s["session_id"]: s for s in c.ok("list_client_sessions", client_id="alice")["sessions"]
    }
    assert set(listed) == {idle, busy}  # closed ones are not listed, expired ones are
    assert listed[idle]["is_active"] is False and listed[busy]["is_active"] is True
    assert c.state(busy) == {"busy": True}

    # the sweep deletes exactly the expired and the closed session
    assert c.handler.cleanup_expired() == 2
    for sid in (idle, closed):
        reply = c.send("restore_session", session_id=sid)
        assert reply["error_code"] == "SessionNotFound", reply
    assert c.state(busy) == {"busy": True}
    stats = c.ok("get_session_statistics")
    assert stats["total_sessions"] == 1 and stats["active_sessions"] == 1
    assert c.handler.cleanup_expired() == 0


def test_expiry_is_not_recorded_until_swept(make: Any) -> None:
    """Forward past the timeout, then back before any sweep: the session is usable again."""
    c = make(policy())
    a = c.create()
    c.ok("update_session_state", session_id=a, state_data={"kept": 1})
    c.clock.advance(TIMEOUT + 1)
    reply = c.send("restore_session", session_id=a)
    assert reply["details"]["reason"] == "expired"
    c.clock.advance(-(TIMEOUT + 1))
    # observed: not expired any more, and nothing was lost
    assert c.state(a) == {"kept": 1}
    assert c.ok("update_session_state", session_id=a, state_data={"more": 2})["revision"] == 3


def test_forward_jump_past_absolute_lifetime(make: Any) -> None:
    c = make(policy(absolute_lifetime=1000))
    a = c.create()
    for _ in range(3):
        c.clock.advance(300)  # used regularly: never idle for long
        assert c.state(a) == {}
    c.clock.advance(101)  # 1001 s since creation
    reply = c.send("restore_session", session_id=a)
    assert reply["error_code"] == "SessionNotFound" and reply["details"]["reason"] == "expired"
    assert c.handler.cleanup_expired() == 1


def test_forward_jump_past_retention(make: Any) -> None:
    c = make(policy(session_timeout=DAY, retention=2 * DAY))
    a = c.create()
    b = c.create()
    c.clock.advance(2 * DAY + 1)
    assert c.handler.cleanup_expired() == 2
    for sid in (a, b):
        assert c.send("restore_session", session_id=sid)["error_code"] == "SessionNotFound"


def test_far_forward_and_back(make: Any) -> None:
    """A spurious jump years ahead and back: sessions used meanwhile are kept."""
    c = make(policy())
    a = c.create()
    c.clock.advance(20 * 365 * DAY)
    assert c.send("restore_session", session_id=a)["details"]["reason"] == "expired"
    b = c.create()
    c.ok("update_session_state", session_id=b, state_data={"future": True})
    c.clock.set(T0 + 1)
    # b was used "in the future": it is not expired now, and keeps its data
    assert c.state(b) == {"future": True}
    assert c.state(a) == {}  # not swept meanwhile: usable again (see above)
    assert c.handler.cleanup_expired() == 0


# -- the rate limiter ---------------------------------------------------------------------------
RATE = 10.0
BURST = 5


def drain(c: Client, client_id: str) -> float:
    """Use up *client_id*'s burst; return the retry_after of the first refusal."""
    for _ in range(BURST):
        c.ok("list_client_sessions", client_id=client_id)
    reply = c.send("list_client_sessions", client_id=client_id)
    assert reply["error_code"] == "RateLimited", reply
    retry_after: float = reply["details"]["retry_after"]
    assert 0 < retry_after <= 1 / RATE + 0.001
    return retry_after


def test_rate_limiter_backwards_jump(make: Any) -> None:
    c = make(policy(rate_limit=RATE, rate_burst=BURST))
    retry = drain(c, "bob")
    c.clock.advance(-3600)
    # no exception, no refill while the clock is behind the latest time seen
    reply = c.send("list_client_sessions", client_id="bob")
    assert reply["error_code"] == "RateLimited", reply
    assert reply["details"]["retry_after"] > 0
    # other clients are not affected by the jump
    assert c.ok("list_client_sessions", client_id="carol")["session_count"] == 0
    # once the clock is back where it was, bob refills as usual: no lasting lockout
    c.clock.advance(3600 + retry + 0.01)
    c.ok("list_client_sessions", client_id="bob")


def test_rate_limiter_huge_forward_jump(make: Any) -> None:
    c = make(policy(rate_limit=RATE, rate_burst=BURST))
    drain(c, "bob")
    c.clock.advance(100 * 365 * DAY)
    # a long wait refills to the burst, never beyond
    drain(c, "bob")
    c.clock.advance(1 / RATE)
    c.ok("list_client_sessions", client_id="bob")


def test_rate_limiter_honours_retry_after_exactly() -> None:
    clock = ManualClock(T0)
    handler = ProtocolHandler(MemoryStore(), policy(rate_limit=RATE, rate_burst=BURST), clock=clock)
    c = Client(handler, clock)
    retry = drain(c, "bob")
    clock.advance(retry)
    c.ok("list_client_sessions", client_id="bob")


def test_rate_limiter_forward_spike_then_correction_injected_clock(make: Any) -> None:
    """With an injected clock, a spike and its correction pause refills until the
    clock is past the spike again (documented: an oscillating clock must not mint
    tokens); the pause is bounded by the spike."""
    c = make(policy(rate_limit=RATE, rate_burst=BURST))
    c.clock.advance(DAY)  # a glitch...
    c.ok("list_client_sessions", client_id="carol")  # the limiter sees it
    c.clock.set(T0 + 1)  # ...corrected
    drain(c, "bob")
    c.clock.advance(60)
    assert c.send("list_client_sessions", client_id="bob")["error_code"] == "RateLimited"
    c.clock.set(T0 + DAY + 1)  # past the spike: refills resume
    c.ok("list_client_sessions", client_id="bob")


def test_rate_limiter_on_the_system_clock_ignores_wall_clock_jumps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On the system clock the limiter runs on monotonic time: a wall-clock spike
    and its correction change nothing."""
    wall = [T0]
    monkeypatch.setattr(SystemClock, "now", lambda self: wall[0])
    handler = ProtocolHandler(
        MemoryStore(), policy(rate_limit=2.0, rate_burst=3), clock=SystemClock()
    )
    c = Client(handler, ManualClock(T0))
    for _ in range(3):
        c.ok("list_client_sessions", client_id="bob")
    refused = c.send("list_client_sessions", client_id="bob")
    assert refused["error_code"] == "RateLimited", refused
    wall[0] = T0 + 365 * DAY  # spike...
    c.send("list_client_sessions", client_id="bob")
    wall[0] = T0  # ...corrected
    time.sleep(refused["details"]["retry_after"] + 0.2)  # real (monotonic) time passes
    c.ok("list_client_sessions", client_id="bob")


def test_rate_limited_request_resent_after_retry_after() -> None:
    clock = ManualClock(T0)
    handler = ProtocolHandler(MemoryStore(), policy(rate_limit=1.0, rate_burst=1), clock=clock)
    sid = handler.handle({"id": "1", "command": "create_session", "parameters": {"client_id": "a"}})
    request = {
        "id": "2",
        "command": "update_session_state",
        "parameters": {
            "client_id": "a",
            "session_id": sid["result"]["session_id"],
            "state_data": {"x": 1},
        },
    }
    first = check_reply(handler.handle(request))
    assert first["error_code"] == "RateLimited"
    clock.advance(first["details"]["retry_after"] + 10)
    assert check_reply(handler.handle(request))["status"] == "success"


# -- the reply cache -----------------------------------------------------------------------------
def test_resent_request_is_not_applied_twice_across_jumps(make: Any) -> None:
    c = make(policy())
    a = c.create()
    request = {
        "id": "once",
        "command": "update_session_state",
        "parameters": {
            "session_id": a,
            "state_data": {"n": 1},
            "append_history": {"ws": [{"source": "Transcript show: 1"}]},
        },
    }
    first = check_reply(c.handler.handle(request))
    assert first["status"] == "success"
    for jump in (-DAY, 2 * DAY, -3600, 10 * 365 * DAY):
        c.clock.advance(jump)
        again = check_reply(c.handler.handle(request))
        assert again == first  # the remembered reply, timestamp and all
    c.clock.set(T0 + 1)
    restored = c.ok("restore_session", session_id=a)
    assert restored["revision"] == first["result"]["revision"]
    assert len(restored["workspace_context"]["workspaces"]["ws"]["history"]) == 1


# -- resume tokens in strict mode ---------------------------------------------------------------
def test_resume_tokens_across_jumps(make: Any) -> None:
    c = make(policy(auth_mode="strict", token_ttl=DAY))
    created = c.ok("create_session", client_id="alice")
    sid, token = created["session_id"], created["resume_token"]
    c.clock.advance(-60)  # small steps back are tolerated
    assert c.ok("get_session_info", session_id=sid, resume_token=token)["is_active"]
    c.clock.advance(-3600)  # a token "from the future" is refused...
    reply = c.send("get_session_info", session_id=sid, resume_token=token)
    assert reply["error_code"] == "SessionNotFound", reply
    c.clock.set(T0 + 10)  # ...until the clock is back: no lasting lockout
    assert c.ok("get_session_info", session_id=sid, resume_token=token)["is_active"]
    c.clock.advance(DAY)  # and it expires after token_ttl as usual
    reply = c.send("get_session_info", session_id=sid, resume_token=token)
    assert reply["status"] == "error", reply

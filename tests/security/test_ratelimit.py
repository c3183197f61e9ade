"""Token-bucket rate limiting: bursts, refills, clock jumps, bounded memory."""

from __future__ import annotations

import threading

import pytest

from stuisession.clock import ManualClock
from stuisession.errors import ConfigurationError, RateLimited
from stuisession.security.ratelimit import TokenBucketLimiter


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def test_burst_then_refusal_with_retry_after(clock: ManualClock) -> None:
    limiter = TokenBucketLimiter(rate=1.0, burst=3, clock=clock)
    for _ in range(3):
        limiter.check("alice")
    with pytest.raises(RateLimited) as info:
        limiter.check("alice")
    err = info.value
    assert err.message == "Rate limit exceeded"
    assert err.error_code == "RateLimited" and err.retryable
    assert err.details == {"retry_after": 1.0}


def test_try_acquire_returns_zero_or_the_wait(clock: ManualClock) -> None:
    limiter = TokenBucketLimiter(rate=2.0, burst=1, clock=clock)
    assert limiter.try_acquire("k") == 0.0
    assert limiter.try_acquire("k") == 0.5
    clock.advance(0.2)
    assert limiter.try_acquire("k") == pytest.approx(0.3)
    clock.advance(0.3)
    assert limiter.try_acquire("k") == 0.0


def test_retry_after_is_rounded_up_to_a_millisecond(clock: ManualClock) -> None:
    limiter = TokenBucketLimiter(rate=3.0, burst=1, clock=clock)
    limiter.check("k")
    wait = limiter.try_acquire("k")
    assert wait == 0.334
    # 10 us early: well above the float noise of timestamps near 1.8e9 s (~0.24 us),
    # which the limiter tolerates so that waiting exactly retry_after always works
    clock.advance(1 / 3 - 1e-5)
    wait = limiter.try_acquire("k")
    assert wait == 0.001  # never 0 while refused
    clock.advance(1e-5)
    assert limiter.try_acquire("k") == 0.0


def test_a_refused_request_takes_no_tokens(clock: ManualClock) -> None:
    limiter = TokenBucketLimiter(rate=1.0, burst=1, clock=clock)
    limiter.check("k")
    for _ in range(10):
        assert limiter.try_acquire("k") > 0
    clock.advance(1.0)
    assert limiter.try_acquire("k") == 0.0


def test_refill_is_capped_at_burst(clock: ManualClock) -> None:
    limiter = TokenBucketLimiter(rate=10.0, burst=4, clock=clock)
    for _ in range(4):
        limiter.check("k")
    clock.advance(3600)
    for _ in range(4):
        limiter.check("k")
    with pytest.raises(RateLimited):
        limiter.check("k")


def test_keys_are_independent(clock: ManualClock) -> None:
    limiter = TokenBucketLimiter(rate=1.0, burst=1, clock=clock)
    limiter.check("alice")
    limiter.check("bob")
    with pytest.raises(RateLimited):
        limiter.check("alice")
    limiter.reset("alice")
    limiter.check("alice")


def test_cost(clock: ManualClock) -> None:
    limiter = TokenBucketLimiter(rate=1.0, burst=5, clock=clock)
    assert limiter.try_acquire("k", cost=4) == 0.0
    assert limiter.try_acquire("k", cost=2) == 1.0
    for bad in (0, -1, 6, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            limiter.try_acquire("k", cost=bad)


def test_clock_backwards_grants_nothing_and_does_not_crash(clock: ManualClock) -> None:
    limiter = TokenBucketLimiter(rate=1.0, burst=2, clock=clock)
    limiter.check("k")
    limiter.check("k")
    clock.advance(-1000)
    assert limiter.try_acquire("k") == 1.0
    clock.advance(999.5)  # still behind the latest time seen
    assert limiter.try_acquire("k") == 1.0
    clock.advance(1.0)  # 0.5 s past it
    assert limiter.try_acquire("k") == 0.5
    clock.advance(0.5)
    assert limiter.try_acquire("k") == 0.0


def test_oscillating_clock_grants_no_more_than_real_time(clock: ManualClock) -> None:
    limiter = TokenBucketLimiter(rate=1.0, burst=1, clock=clock)
    granted = 0
    for _ in range(20):
        granted += limiter.try_acquire("k") == 0.0
        clock.advance(-5)
        granted += limiter.try_acquire("k") == 0.0
        clock.advance(5)
    assert granted == 1  # the clock never got past its start: only the burst


def test_new_key_after_clock_backwards(clock: ManualClock) -> None:
    limiter = TokenBucketLimiter(rate=1.0, burst=1, clock=clock)
    limiter.check("a")
    clock.advance(-50)
    limiter.check("b")  # a new bucket starts full
    with pytest.raises(RateLimited):
        limiter.check("b")
    assert limiter.try_acquire("b") == 1.0


def test_memory_is_bounded(clock: ManualClock) -> None:
    limiter = TokenBucketLimiter(rate=1.0, burst=2, clock=clock, max_clients=10)
    for i in range(1000):
        limiter.check(f"client-{i}")
        assert len(limiter) <= 10
    assert len(limiter) == 10


def test_full_buckets_are_evicted_before_busy_ones(clock: ManualClock) -> None:
    limiter = TokenBucketLimiter(rate=1.0, burst=2, clock=clock, max_clients=2)
    limiter.check("a")
    limiter.check("a")  # a: 0 tokens, least recently used
    clock.advance(0.1)
    limiter.check("b")  # b: 1 token
    clock.advance(1.1)  # a: 1.2 tokens (not full), b: 2 tokens (full)
    limiter.check("c")  # needs room: b goes, a stays
    assert len(limiter) == 2
    limiter.check("a")  # 0.2 tokens left
    assert limiter.try_acquire("a") == 0.8  # a kept its debt: no fresh burst


def test_lru_is_evicted_when_no_bucket_is_full(clock: ManualClock) -> None:
    limiter = TokenBucketLimiter(rate=0.001, burst=1, clock=clock, max_clients=2)
    limiter.check("a")
    limiter.check("b")
    limiter.check("c")  # nobody is full: a (least recently used) goes
    assert len(limiter) == 2
    assert limiter.try_acquire("b") > 0  # b kept
    assert limiter.try_acquire("a") == 0.0  # a forgotten: starts full again


def test_prune_drops_only_full_buckets(clock: ManualClock) -> None:
    limiter = TokenBucketLimiter(rate=1.0, burst=1, clock=clock)
    limiter.check("old")
    clock.advance(5)
    limiter.check("new")
    assert limiter.prune() == 1
    assert len(limiter) == 1
    assert limiter.try_acquire("new") > 0


def test_thread_safety(clock: ManualClock) -> None:
    limiter = TokenBucketLimiter(rate=0.001, burst=100, clock=clock)
    granted: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def work() -> None:
        barrier.wait()
        mine = sum(limiter.try_acquire("shared") == 0.0 for _ in range(100))
        with lock:
            granted.append(mine)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(granted) == 100


def test_default_clock_is_monotonic_real_time() -> None:
    limiter = TokenBucketLimiter(rate=1.0, burst=1)
    assert limiter.try_acquire("k") == 0.0
    wait = limiter.try_acquire("k")
    assert 0.9 < wait <= 1.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rate": 0, "burst": 1},
        {"rate": -1, "burst": 1},
        {"rate": float("inf"), "burst": 1},
        {"rate": float("nan"), "burst": 1},
        {"rate": 1, "burst": 0},
        {"rate": 1, "burst": 1.5},
        {"rate": 1, "burst": 1, "max_clients": 0},
    ],
)
def test_bad_configuration_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        TokenBucketLimiter(**kwargs)  # type: ignore[arg-type]


def test_repr_shows_settings_not_keys(clock: ManualClock) -> None:
    limiter = TokenBucketLimiter(rate=1.0, burst=1, clock=clock)
    limiter.check("secret-client")
    assert "secret-client" not in repr(limiter)
    assert "buckets=1" in repr(limiter)

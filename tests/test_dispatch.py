"""The keyed worker pool: order per key, parallelism across keys, back-pressure."""

from __future__ import annotations

import threading
import time

import pytest

from stuisession.bridge.workers import KeyedExecutor
from stuisession.errors import Busy


def test_jobs_of_one_key_run_in_order_and_keys_run_in_parallel() -> None:
    ex = KeyedExecutor(workers=4, max_pending=10_000)
    seen: dict[str, list[int]] = {"a": [], "b": [], "c": []}
    for i in range(300):
        for k in seen:
            ex.submit(k, lambda k=k, i=i: seen[k].append(i))
    assert ex.drain(10)
    assert all(v == list(range(300)) for v in seen.values())
    # a blocked key does not hold up another key
    gate = threading.Event()
    done = threading.Event()
    ex.submit("slow", lambda: gate.wait(5))
    ex.submit("fast", done.set)
    assert done.wait(5)
    gate.set()
    ex.shutdown()


def test_one_key_never_runs_twice_at_once() -> None:
    ex = KeyedExecutor(workers=4)
    active = []
    overlap = []

    def job() -> None:
        active.append(1)
        if len(active) > 1:
            overlap.append(1)
        time.sleep(0.001)
        active.pop()

    for _ in range(50):
        ex.submit("k", job)
    assert ex.drain(10)
    assert not overlap
    ex.shutdown()


def test_saturation_raises_busy_and_recovers() -> None:
    ex = KeyedExecutor(workers=1, max_pending=3)
    gate = threading.Event()
    for _ in range(3):
        ex.submit("k", lambda: gate.wait(5))
    with pytest.raises(Busy):
        ex.submit("other", lambda: None)
    gate.set()
    assert ex.drain(5)
    ex.submit("other", lambda: None)
    ex.shutdown()
    with pytest.raises(Busy):
        ex.submit("late", lambda: None)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        KeyedExecutor(workers=0)

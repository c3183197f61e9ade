"""Large-request pacing (issue 17): two token buckets, the executor's lane, the supervisor's lane.

The latency these protect is measured against a real ``serve`` in
``tests/adversarial`` (``cpu_valid_json``, ``cpu_valid_json_medium``); here each
mechanism is checked on its own, on a manual clock where time matters.
"""

from __future__ import annotations

import json
import os
import threading
import time
import types
from collections.abc import Iterator

import attrs
import pytest

from stuisession.bridge.pacing import BURST_SECONDS, LARGE_BYTES, Pacer
from stuisession.bridge.supervisor import Supervisor
from stuisession.bridge.workers import KeyedExecutor
from stuisession.errors import ConfigurationError
from stuisession.policy import Policy
from stuisession.stores.base import ChangeEvent

MB = 1024 * 1024


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_large_requests_start_no_faster_than_the_byte_rate() -> None:
    clock = ManualClock()
    pacer = Pacer(10 * MB, None, clock=clock)
    burst = int(10 * MB * BURST_SECONDS)  # 5 MB
    assert pacer.wait_time() == 0.0
    pacer.start(burst)  # the burst is spent
    # 4 MB more would take 0.4 s of the rate: the next request waits for it
    assert pacer.wait_time() == 0.0  # the bucket is empty, not in debt
    pacer.start(4 * MB)
    assert pacer.wait_time() == pytest.approx(0.4)
    clock.now += 0.3
    assert pacer.wait_time() == pytest.approx(0.1)
    clock.now += 0.1
    assert pacer.wait_time() == 0.0


def test_a_request_larger_than_the_burst_still_runs_and_its_debt_delays_the_next() -> None:
    clock = ManualClock()
    pacer = Pacer(1 * MB, None, clock=clock)
    assert pacer.wait_time() == 0.0
    pacer.start(8 * MB)  # 0.5 MB of burst, 7.5 MB of debt
    assert pacer.wait_time() == pytest.approx(7.5)


def test_large_requests_take_no_more_than_their_share_of_wall_time() -> None:
    clock = ManualClock()
    pacer = Pacer(None, 0.25, clock=clock)
    started = pacer.start(10 * MB)  # bytes are not counted without a rate
    clock.now += 1.0  # it ran 1 s (0.125 s of burst, 0.25 s refilled)
    pacer.finish(started)
    # 1 s busy at a 25% share: large requests rest until that is 25% of the whole
    assert pacer.wait_time() == pytest.approx((1.0 - 0.25 - 0.25 * BURST_SECONDS) / 0.25)
    clock.now += 100
    assert pacer.wait_time() == 0.0
    # a full bucket holds BURST_SECONDS of the share, no more: after 100 s of rest, a
    # job that uses exactly that (0.125 s + its own 25%) empties it ...
    started = pacer.start(1)
    clock.now += 0.25 * BURST_SECONDS / 0.75
    pacer.finish(started)
    assert pacer.wait_time() == 0.0
    # ... so the next one's 0.1 s (less its own 0.025 s) is debt
    started = pacer.start(1)
    clock.now += 0.1
    pacer.finish(started)
    assert pacer.wait_time() == pytest.approx(0.075 / 0.25)


def test_the_executor_charges_each_large_job_its_duration() -> None:
    clock = ManualClock()
    pacer = Pacer(None, 0.25, clock=clock)
    pool = KeyedExecutor(workers=1, max_pending=4, pacer=pacer)

    def runs_for(seconds: float) -> None:
        clock.now += seconds

    try:
        pool.submit("a", lambda: runs_for(0.1), heavy=False)  # small jobs are free
        assert pool.drain(30)
        assert pacer.wait_time() == 0.0
        pool.submit("a", lambda: runs_for(0.3), heavy=True, size=MB)
        assert pool.drain(30)
        # 0.125 s of burst + 0.075 s refilled - 0.3 s run: 0.1 s of debt at 25%
        assert pacer.wait_time() == pytest.approx(0.1 / 0.25)
    finally:
        pool.shutdown()


def test_an_unpaced_pacer_never_waits() -> None:
    pacer = Pacer(None, None)
    for _ in range(100):
        started = pacer.start(100 * MB)
        pacer.finish(started - 10.0)  # as if it had run for 10 s
    assert pacer.wait_time() == 0.0


@pytest.mark.parametrize(("rate", "share"), [(0, None), (-1.0, None), (None, 0), (None, 1.5)])
def test_pacer_refuses_meaningless_bounds(rate: float | None, share: float | None) -> None:
    with pytest.raises(ValueError, match=r"rate|share"):
        Pacer(rate, share)


@pytest.mark.parametrize(
    "field", [{"large_request_rate": 0}, {"large_request_share": 0}, {"large_request_share": 2}]
)
def test_policy_refuses_meaningless_large_request_bounds(field: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError, match="large_request"):
        Policy(**field)  # type: ignore[arg-type]


def test_policy_paces_large_requests_by_default() -> None:
    policy = Policy()
    assert policy.large_request_rate == 64 * MB
    assert policy.large_request_share == 0.25


def test_small_jobs_run_while_a_large_one_waits_for_the_pacer() -> None:
    """A heavy job held back by the pacer holds back no small job; it starts once the
    clock says the bucket has refilled (no sleeping on real time to decide it)."""
    clock = ManualClock()
    pacer = Pacer(1 * MB, None, clock=clock)
    pool = KeyedExecutor(workers=2, max_pending=16, pacer=pacer)
    started: list[str] = []
    lock = threading.Lock()
    second = threading.Event()

    def job(name: str, done: threading.Event | None = None) -> None:
        with lock:
            started.append(name)
        if done is not None:
            done.set()

    try:
        first = threading.Event()
        pool.submit("a", lambda: job("large-1", first), heavy=True, size=2 * MB)
        assert first.wait(10)
        pool.submit("b", lambda: job("large-2", second), heavy=True, size=2 * MB)
        small = threading.Event()
        pool.submit("c", lambda: job("small", small))
        assert small.wait(10), "a small job waited behind a paced one"
        assert not second.is_set()
        assert pool.heavy_waiting == 1
        clock.now += 1.5  # the 1.5 MB of debt is paid off
        assert second.wait(10), "the paced job did not start once the bucket refilled"
    finally:
        assert pool.drain(30)
        pool.shutdown()
    assert started == ["large-1", "small", "large-2"]


def test_large_requests_keep_their_key_order_behind_the_pacer() -> None:
    clock = ManualClock()
    pool = KeyedExecutor(workers=4, max_pending=64, pacer=Pacer(1 * MB, None, clock=clock))
    seen: list[int] = []
    try:
        for i in range(6):
            pool.submit("s", lambda i=i: seen.append(i), heavy=i % 2 == 0, size=MB)
        for _ in range(600):  # each heavy one waits for 1 s of the manual clock
            if pool.drain(0.05):
                break
            clock.now += 0.5
        assert pool.drain(30)
    finally:
        pool.shutdown()
    assert seen == list(range(6))


# -- the supervisor's large-request lane ---------------------------------------------------
@pytest.fixture
def supervisor() -> Iterator[Supervisor]:
    sup = Supervisor(
        "tcp://127.0.0.1:*",
        2,
        lambda config, context: (None, lambda: None),
        policy=Policy(),
        idle_timeout=60.0,
    )
    try:
        yield sup
    finally:
        sup.close()


def test_large_requests_go_to_the_lane_and_small_ones_to_their_connections_worker(
    supervisor: Supervisor,
) -> None:
    assert supervisor.lane == 2
    for n in range(20):
        ident = f"conn-{n}".encode()
        assert supervisor._route(ident, LARGE_BYTES + 1) == supervisor.lane
        small = supervisor._route(ident, LARGE_BYTES)
        assert small != supervisor.lane
        assert supervisor._route(ident, 100) == small  # the same worker each time


def test_a_connections_requests_follow_the_ones_it_has_in_flight(supervisor: Supervisor) -> None:
    """Per-connection order across lanes: a small request sent while the connection's
    large one is in flight goes where that one went, and vice versa."""
    ident = b"pipelining-dealer"
    small_home = supervisor._route(ident, 10)

    def forward(size: int) -> int:
        index = supervisor._route(ident, size)
        _, count, _ = supervisor._inflight.get(ident, (index, 0, 0.0))
        supervisor._inflight[ident] = (index, count + 1, 0.0 + 1e9)
        return index

    assert forward(2 * LARGE_BYTES) == supervisor.lane
    assert forward(10) == supervisor.lane  # behind the large one
    supervisor._answered(ident)
    assert forward(10) == supervisor.lane  # one still in flight there
    supervisor._answered(ident)
    supervisor._answered(ident)
    assert ident not in supervisor._inflight
    assert forward(10) == small_home  # nothing in flight: by size again
    assert forward(2 * LARGE_BYTES) == small_home  # behind the small one
    supervisor._answered(ident)
    supervisor._answered(ident)
    assert supervisor._route(ident, 2 * LARGE_BYTES) == supervisor.lane


def test_unanswered_requests_do_not_pin_a_connection_for_ever(supervisor: Supervisor) -> None:
    ident = b"dropped-connection"
    supervisor._inflight[ident] = (supervisor.lane, 3, 0.0)  # forwarded long ago
    supervisor._inflight[b"recent"] = (supervisor.lane, 1, float("inf"))
    supervisor._forget_stale()
    assert ident not in supervisor._inflight
    assert b"recent" in supervisor._inflight
    supervisor._answered(b"never-seen")  # a reply for nothing counted is ignored


def test_the_lane_holds_the_whole_budget_and_each_worker_its_part(
    supervisor: Supervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    configs = []

    class FakeProcess:
        pid = 1

        def __init__(self, target: object, args: tuple[object, object], name: str) -> None:
            configs.append(args[1])

        def start(self) -> None:
            pass

        def is_alive(self) -> bool:
            return False

    monkeypatch.setattr(supervisor._mp, "Process", FakeProcess)
    for i in range(3):
        supervisor._spawn(i)
    assert [c.pace_share for c in configs] == [0.5, 0.5, 1.0]
    assert [c.lane for c in configs] == [False, False, True]
    assert [c.sweeper for c in configs] == [True, False, False]


# -- change notices behind a supervisor (``serve --workers N --notify``) -----------------------
class FakeNotifier:
    """Stands in for the parent's Notifier: records what it is asked to publish."""

    def __init__(self) -> None:
        self.posted: list[ChangeEvent] = []
        self.closed = False

    def post(self, event: ChangeEvent) -> None:
        self.posted.append(event)

    def statistics(self) -> dict[str, int]:
        return {"published": len(self.posted), "granted": 0, "refused": 0}

    def close(self) -> None:
        self.closed = True


def test_the_parent_posts_the_workers_change_events_and_drops_malformed_ones() -> None:
    import zmq

    fake = FakeNotifier()
    sup = Supervisor(
        "tcp://127.0.0.1:*",
        2,
        lambda config, context: (None, lambda: None),
        policy=Policy(),
        notifier_factory=lambda context: fake,
        forward_notices=True,
    )
    ctx = zmq.Context()
    try:
        push = ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        push.connect(sup.notices_endpoint)
        good = ChangeEvent("session_" + "A" * 43, "updated", 7, "lin")
        for data in (b"not json", b'{"s": "x", "e": "exploded", "r": 1}', good.to_json()):
            push.send(data)
        assert sup._notices.poll(10_000)
        deadline = time.monotonic() + 10
        while not fake.posted and time.monotonic() < deadline:
            sup._post_notices()
            sup._notices.poll(100)
        assert fake.posted == [good]
        sup._publish()
        with open(os.path.join(sup._dir, "stats-broker.json"), encoding="utf-8") as f:
            assert json.load(f)["notifications"]["published"] == 1
        push.close()
    finally:
        ctx.destroy(linger=0)
        sup.close()
    assert fake.closed


def test_a_worker_forwards_the_change_events_of_its_writes() -> None:
    import zmq

    from stuisession.bridge.supervisor import WorkerConfig, _forward_notices
    from stuisession.stores.memory import MemoryStore

    store = MemoryStore()
    server = types.SimpleNamespace(
        handler=types.SimpleNamespace(service=types.SimpleNamespace(store=store))
    )
    ctx = zmq.Context()
    try:
        pull = ctx.socket(zmq.PULL)
        pull.setsockopt(zmq.LINGER, 0)
        port = pull.bind_to_random_port("tcp://127.0.0.1")
        config = WorkerConfig(
            index=0,
            endpoint="ipc://unused",
            stats_dir="/nonexistent",
            started_at=0.0,
            sweeper=False,
            parent_pid=os.getpid(),
            notices=f"tcp://127.0.0.1:{port}",
        )
        close = _forward_notices(server, config, ctx)
        assert close is not None and store.has_change_listeners
        event = ChangeEvent("session_" + "B" * 43, "closed", 3)
        store.announce(event)
        assert pull.poll(10_000)
        assert ChangeEvent.from_json(pull.recv()) == event
        close()
        assert not store.has_change_listeners
        assert _forward_notices(server, attrs.evolve(config, notices=None), ctx) is None
    finally:
        ctx.destroy(linger=0)


def test_a_callers_requests_meet_one_reply_cache_on_any_connection(
    supervisor: Supervisor,
) -> None:
    """Resends on new connections: routed by whose reply cache answers them (the CURVE
    key, else the resend_key), not by the connection."""
    homes = {supervisor._route(f"conn-{n}".encode(), 100, b"curve:KEY") for n in range(32)}
    assert len(homes) == 1
    by_connection = {supervisor._route(f"conn-{n}".encode(), 100) for n in range(32)}
    assert len(by_connection) == 2  # without a scope the connections spread out
    # a large request still goes to the lane
    assert supervisor._route(b"conn-0", LARGE_BYTES + 1, b"curve:KEY") == supervisor.lane


@pytest.mark.parametrize(
    ("body", "key"),
    [
        (b'{"id":"1","parameters":{"resend_key":"abcdefghijklmnop"}}', b"abcdefghijklmnop"),
        (b'{"parameters": {"client_id": "a", "resend_key" : "' + b"k" * 128 + b'"}}', b"k" * 128),
        (b'{"parameters":{"resend_key":"short"}}', None),  # not a resend key (< 16)
        (b'{"parameters":{"resend_key":"' + b"k" * 129 + b'"}}', None),  # > 128
        (b'{"parameters":{"resend_key":"with \\"escape\\" inside"}}', None),
        (b'{"parameters":{"client_id":"a"}}', None),
        (
            b'{"parameters":{"resend_key":"'
            + b"k" * 20
            + b'"}, "pad":"'
            + b"x" * LARGE_BYTES
            + b'"}',
            None,
        ),
    ],
)
def test_the_resend_key_is_found_without_parsing(body: bytes, key: bytes | None) -> None:
    import zmq

    from stuisession.bridge.supervisor import _resend_key

    assert _resend_key(zmq.Frame(body)) == key

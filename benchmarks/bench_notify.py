"""Change notices (``serve --notify``): delivery latency and what they add to an update.

Run:  python benchmarks/bench_notify.py [--rate 100] [--duration 10] [--subscribers 10]
      [--cost-n 400] [--json OUT]

Starts ``stuisession serve --notify`` as a subprocess (file store, fsync on, audit log
on, rate limit off) on free 127.0.0.1 ports. One writer sends ``update_session_state``
at *rate* per second for *duration* seconds; *subscribers* SUB sockets hold a watch
token of that session (obtained with ``watch_session``). The latency of a notice is
the time from the writer's receipt of the acknowledgement to a subscriber's receipt
of the notice with that revision (one clock: the writer and the subscribers are
threads of this process; a notice that overtakes the acknowledgement counts as 0).
Notices never received are counted as lost (PUB drops under pressure; none expected
at this rate).

The cost of notices: sequential updates against two bridges running at once (both
``--workers 1``), one without ``--notify`` and one with ``--notify`` and *subscribers*
subscribed (in a process of their own, draining as they go), taking turns update by
update; five rounds, the added cost is the median of the rounds' p50 ratios. Also, in-process, the
service's update on a MemoryStore with and without a change listener (the CPU the
notice itself costs, without fsync to hide it).

No timing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import benchlib
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


@contextmanager
def bridge(notify: bool) -> Iterator[tuple[str, str | None]]:
    """A ``stuisession serve`` subprocess: (request endpoint, notify endpoint or None)."""
    with benchlib.scratch("notify") as root:
        endpoint = f"tcp://127.0.0.1:{benchlib.free_port()}"
        notify_ep = f"tcp://127.0.0.1:{benchlib.free_port()}" if notify else None
        cmd = [sys.executable, "-m", "stuisession", "serve", "--bind", endpoint]
        # one process on both sides: --notify runs in one process, and a bridge without
        # it would otherwise start a worker per core behind a broker (another hop)
        cmd += ["--store", str(root / "store"), "--log-level", "WARNING", "--workers", "1"]
        if notify_ep:
            cmd += ["--notify", notify_ep]
        env = dict(os.environ, STUISESSION_RATE_LIMIT="none")
        env["PYTHONPATH"] = os.pathsep.join(
            [str(benchlib.ROOT / "src"), env.get("PYTHONPATH", "")]
        ).rstrip(os.pathsep)
        with (root / "server.log").open("w") as log:
            server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                yield endpoint, notify_ep
            finally:
                server.send_signal(signal.SIGTERM)
                try:
                    server.wait(30)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait(10)


class Req:
    """A REQ socket that waits for the bridge to come up."""

    def __init__(self, ctx: zmq.Context, endpoint: str) -> None:
        self.sock = ctx.socket(zmq.REQ)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVTIMEO, 30_000)
        self.sock.connect(endpoint)
        self.n = 0

    def call(self, command: str, **params: Any) -> dict[str, Any]:
        self.n += 1
        body = {"id": f"b{self.n}", "command": command, "parameters": params}
        self.sock.send(json.dumps(body).encode())
        reply: dict[str, Any] = json.loads(self.sock.recv())
        if reply.get("status") != "success":
            raise RuntimeError(f"{command}: {reply}")
        result: dict[str, Any] = reply["result"]
        return result


def _subscribe(ctx: zmq.Context, endpoint: str, token: dict[str, Any], n: int) -> list[Any]:
    subs = []
    for _ in range(n):
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, 100_000)
        sub.connect(endpoint)
        sub.setsockopt(zmq.SUBSCRIBE, token["subscription"].encode())
        sub.setsockopt(zmq.SUBSCRIBE, token["topic"].encode())
        subs.append(sub)
    # every subscription confirmed ("subscribed" notice) before measuring
    for sub in subs:
        if not sub.poll(30_000):
            raise RuntimeError("a subscription was not confirmed")
        sub.recv_multipart()
    return subs


def latency(rate: float, duration: float, subscribers: int) -> dict[str, Any]:
    ctx = zmq.Context()
    try:
        with bridge(notify=True) as (endpoint, notify_ep):
            assert notify_ep is not None
            req = Req(ctx, endpoint)
            sid = req.call("create_session", client_id="bench")["session_id"]
            token = req.call("watch_session", session_id=sid, client_id="bench")
            subs = _subscribe(ctx, notify_ep, token, subscribers)
            received: dict[tuple[int, int], float] = {}
            stop = threading.Event()

            def receive() -> None:
                poller = zmq.Poller()
                for s in subs:
                    poller.register(s, zmq.POLLIN)
                while not stop.is_set():
                    for s, _ in poller.poll(100):
                        now = time.perf_counter()
                        while True:
                            try:
                                _topic, body = s.recv_multipart(zmq.NOBLOCK)
                            except zmq.Again:
                                break
                            notice = json.loads(body)
                            if notice["event"] == "updated":
                                received[(subs.index(s), notice["revision"])] = now

            thread = threading.Thread(target=receive, daemon=True)
            thread.start()
            acked: dict[int, float] = {}
            interval = 1.0 / rate
            next_at = time.perf_counter()
            end = next_at + duration
            i = 0
            while time.perf_counter() < end:
                i += 1
                result = req.call(
                    "update_session_state",
                    session_id=sid,
                    client_id="bench",
                    state_data={"n": i},
                    mode="merge",
                )
                acked[result["revision"]] = time.perf_counter()
                next_at += interval
                time.sleep(max(0.0, next_at - time.perf_counter()))
            time.sleep(1.0)
            stop.set()
            thread.join(5)
            lat = [
                max(0.0, (received[(k, rev)] - t) * 1000)
                for rev, t in acked.items()
                for k in range(subscribers)
                if (k, rev) in received
            ]
            expected = len(acked) * subscribers
            return {
                "updates": len(acked),
                "subscribers": subscribers,
                "rate": rate,
                "achieved_rate": len(acked) / duration,
                "notices_expected": expected,
                "notices_lost": expected - len(lat),
                "latency_ms": benchlib.summary(lat) if lat else None,
            }
    finally:
        ctx.destroy(linger=0)


def _subscriber_process(
    endpoint: str, token: dict[str, Any], n: int, ready: Any, stop: Any, out: Any
) -> None:
    """*n* subscribers in a process of their own: subscribe, then drain until *stop*."""
    ctx = zmq.Context()
    try:
        subs = _subscribe(ctx, endpoint, token, n)
        ready.set()
        poller = zmq.Poller()
        for s in subs:
            poller.register(s, zmq.POLLIN)
        received = 0
        while not stop.is_set():
            for s, _ in poller.poll(50):
                while True:
                    try:
                        s.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    received += 1
        out.put(received)
    finally:
        ctx.destroy(linger=0)


def update_cost(n: int, subscribers: int, rounds: int = 5) -> dict[str, Any]:
    """Sequential updates, alternating between a bridge without and one with notices.

    Both bridges run at once on the same file system (both ``--workers 1``) and take
    turns update by update, so drift (caches, fsync latency, other load) hits both
    sides alike. The subscribers run in a process of their own (they still share the
    machine's cores, as subscribers on the same host would). *n* updates per side in
    *rounds* rounds: the added cost is the median of the rounds' p50 ratios.
    """
    import multiprocessing

    ctx = zmq.Context()
    mp = multiprocessing.get_context("spawn")
    times: dict[str, list[float]] = {"off": [], "on": []}
    ratios: list[float] = []
    proc = None
    stop = mp.Event()
    try:
        with bridge(notify=False) as (off_ep, _), bridge(notify=True) as (on_ep, notify_ep):
            assert notify_ep is not None
            sides = []
            for label, endpoint in (("off", off_ep), ("on", on_ep)):
                req = Req(ctx, endpoint)
                sid = req.call("create_session", client_id="bench")["session_id"]
                sides.append((label, req, sid))
            on_req, on_sid = sides[1][1], sides[1][2]
            token = on_req.call("watch_session", session_id=on_sid, client_id="bench")
            ready, out = mp.Event(), mp.Queue()
            proc = mp.Process(
                target=_subscriber_process, args=(notify_ep, token, subscribers, ready, stop, out)
            )
            proc.start()
            if not ready.wait(60):
                raise RuntimeError("the subscribers did not subscribe")
            i = 0
            for r in range(rounds + 1):  # round 0 is a warm-up
                this: dict[str, list[float]] = {"off": [], "on": []}
                for _ in range(max(20, n // rounds) if r else 20):
                    i += 1
                    for label, req, sid in sides if i % 2 else sides[::-1]:
                        t0 = time.perf_counter()
                        req.call(
                            "update_session_state",
                            session_id=sid,
                            client_id="bench",
                            state_data={"n": i},
                            mode="merge",
                        )
                        this[label].append((time.perf_counter() - t0) * 1000)
                if r:
                    ratios.append(benchlib.pct(this["on"], 0.5) / benchlib.pct(this["off"], 0.5))
                    for label in times:
                        times[label] += this[label]
            stop.set()
            received = out.get(timeout=30)
    finally:
        stop.set()
        if proc is not None:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
        ctx.destroy(linger=0)
    out_doc: dict[str, Any] = {label: benchlib.summary(xs) for label, xs in times.items()}
    out_doc["round_ratios"] = [round(x, 4) for x in ratios]
    out_doc["added_p50"] = statistics.median(ratios) - 1
    out_doc["added_mean"] = out_doc["on"]["mean"] / out_doc["off"]["mean"] - 1
    out_doc["notices_received"] = received
    return out_doc


def service_cost(n: int) -> dict[str, Any]:
    """In-process: SessionService.update on a MemoryStore, without and with a listener."""
    from stuisession.service.core import SessionService
    from stuisession.state.updates import StateUpdate
    from stuisession.stores.base import ChangeEvent
    from stuisession.stores.memory import MemoryStore

    out: dict[str, Any] = {}
    for label in ("off", "on"):
        store = MemoryStore()
        sink: list[ChangeEvent] = []
        if label == "on":
            store.add_change_listener(sink.append)
        service = SessionService(store)
        sid = service.create("bench").session.session_id
        times = []
        for i in range(n):
            update = StateUpdate(sets=((("session_state", "n"), i),))
            t0 = time.perf_counter()
            service.update(sid, update)
            times.append((time.perf_counter() - t0) * 1000)
        out[label] = benchlib.summary(times)
    out["added_p50"] = out["on"]["p50"] / out["off"]["p50"] - 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--subscribers", type=int, default=10)
    ap.add_argument("--cost-n", type=int, default=400)
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args()
    started = time.perf_counter()
    lat = latency(args.rate, args.duration, args.subscribers)
    s = lat["latency_ms"]
    print(
        f"notice latency at {lat['achieved_rate']:.0f} updates/s, {lat['subscribers']} "
        f"subscribers: p50 {s['p50']:.2f} ms, p99 {s['p99']:.2f} ms, max {s['max']:.2f} ms; "
        f"lost {lat['notices_lost']} of {lat['notices_expected']}"
    )
    cost = update_cost(args.cost_n, args.subscribers)
    one = update_cost(args.cost_n, 1)
    for label, c in ((f"{args.subscribers} subscribers", cost), ("1 subscriber", one)):
        print(
            f"update via the bridge (file store, fsync), {label}: off p50 "
            f"{c['off']['p50']:.3f} ms, on p50 {c['on']['p50']:.3f} ms "
            f"({c['added_p50']:+.1%}; mean {c['added_mean']:+.1%})"
        )
    svc = service_cost(args.cost_n * 5)
    print(
        f"service update, MemoryStore: off p50 {svc['off']['p50'] * 1000:.1f} µs, "
        f"on p50 {svc['on']['p50'] * 1000:.1f} µs ({svc['added_p50']:+.1%})"
    )
    benchlib.emit(
        {
            "latency": lat,
            "bridge_update": cost,
            "bridge_update_one_subscriber": one,
            "service_update_memory": svc,
            "elapsed_s": time.perf_counter() - started,
            "setup": "stuisession serve --workers 1 [--notify] (file store, fsync on, audit "
            "on), one writer; latency: subscribers in the writer's process (one clock); "
            "cost: subscribers in a process of their own, median of 5 rounds",
        },
        args.json,
    )


if __name__ == "__main__":
    main()

"""The bridge duties of BridgeServer, in-process: forwarding, capture, back-pressure,
per-session order, connection tracking, graceful stop and resend deduplication.

The Pharo image is replaced by :class:`upstream_double.UpstreamDoubleServer`, a
test double of its STUIServer on a loopback REP socket. Every receive has a
timeout; every timing bound is generous (a loaded 2-core machine must pass).
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq

from stuisession.bridge.forwarding import CaptureHooks, ZmqUpstream
from stuisession.bridge.server import BridgeServer, peek_fields
from stuisession.bridge.workers import KeyedExecutor
from stuisession.policy import Policy
from stuisession.protocol.handler import ProtocolHandler
from stuisession.security.identity import Caller, fingerprint
from stuisession.state.updates import StateUpdate
from stuisession.stores.memory import MemoryStore
from upstream_double import UpstreamDoubleServer

#: failure timeout of every receive (ms): it only bounds a broken test
RECV_MS = 15_000
#: "answers quickly" while another request is stuck on the image (seconds)


class Running:
    """A BridgeServer serving in a background thread."""

    def __init__(self, srv: BridgeServer) -> None:
        self.srv = srv
        self.thread = threading.Thread(target=srv.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return self.srv.bound_endpoint

    def shutdown(self) -> None:
        self.srv.stop()
        self.thread.join(30)
        assert not self.thread.is_alive(), "serve_forever did not return after stop()"
        self.srv.close()


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def start() -> Iterator[Callable[..., Running]]:
    """start(handler=None, **server_kwargs) -> a running server, stopped after the test."""
    running: list[Running] = []

    def factory(handler: ProtocolHandler | None = None, **kwargs: Any) -> Running:
        kwargs.setdefault("sweep_interval", 3600)
        srv = BridgeServer(handler or ProtocolHandler(MemoryStore()), "tcp://127.0.0.1:*", **kwargs)
        r = Running(srv)
        running.append(r)
        return r

    yield factory
    for r in running:
        r.shutdown()


@pytest.fixture
def double() -> Iterator[Callable[..., UpstreamDoubleServer]]:
    """double(stall=0.0) -> a running upstream test double, closed after the test."""
    made: list[UpstreamDoubleServer] = []

    def factory(stall: float = 0.0) -> UpstreamDoubleServer:
        d = UpstreamDoubleServer(stall=stall)
        made.append(d)
        return d

    yield factory
    for d in made:
        d.close()


@pytest.fixture
def upstream() -> Iterator[Callable[..., ZmqUpstream]]:
    """upstream(endpoint, timeout=10.0) -> a ZmqUpstream on a private context."""
    made: list[tuple[ZmqUpstream, zmq.Context]] = []

    def factory(endpoint: str, timeout: float = 10.0) -> ZmqUpstream:
        context = zmq.Context()
        up = ZmqUpstream(endpoint, timeout=timeout, context=context)
        made.append((up, context))
        return up

    yield factory
    for up, context in made:
        up.close()
        context.destroy(linger=0)


def connect(
    ctx: zmq.Context, kind: int, endpoint: str, identity: bytes | None = None
) -> zmq.Socket:
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.RCVTIMEO, RECV_MS)
    sock.setsockopt(zmq.SNDTIMEO, RECV_MS)
    sock.setsockopt(zmq.LINGER, 0)
    if identity is not None:
        sock.setsockopt(zmq.ROUTING_ID, identity)
    sock.connect(endpoint)
    return sock


def request(rid: str, command: str, **parameters: Any) -> bytes:
    return json.dumps({"id": rid, "command": command, "parameters": parameters}).encode()


def call(sock: zmq.Socket, rid: str, command: str, **parameters: Any) -> dict[str, Any]:
    sock.send(request(rid, command, **parameters))
    reply = json.loads(sock.recv())
    assert reply["id"] == rid
    return reply


def ok(reply: dict[str, Any]) -> dict[str, Any]:
    assert reply["status"] == "success", reply
    return reply["result"]


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.monotonic()
    result = fn()
    return result, time.monotonic() - started


_probes = itertools.count()


def stats(r: Running) -> dict[str, Any]:
    """get_session_statistics as an operator sees it (in-process, trusted)."""
    reply = r.srv.handler.handle(
        {"id": "stats", "command": "get_session_statistics"}, caller=Caller.local()
    )
    return ok(reply)


def connection(statistics: dict[str, Any], identity: bytes) -> dict[str, Any] | None:
    # routing identities are shown to operators only as a keyed fingerprint
    found = [c for c in statistics["connections"] if c["identity"] == fingerprint(identity.hex())]
    return found[0] if found else None


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


# -- forwarding ------------------------------------------------------------------------------
def test_forwarded_replies_reach_the_right_client(
    start: Callable[..., Running],
    ctx: zmq.Context,
    double: Callable[..., UpstreamDoubleServer],
    upstream: Callable[..., ZmqUpstream],
):
    image = double()
    r = start(upstream=upstream(image.endpoint))
    n_clients = 6
    replies: dict[int, dict[str, Any]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(n_clients)

    def client(n: int) -> None:
        try:
            sock = connect(ctx, zmq.REQ, r.endpoint)
            try:
                barrier.wait(10)
                for i in range(5):
                    reply = call(sock, f"e{n}-{i}", "evaluate", code=f"{n} + {1000 * i}")
                    assert ok(reply)["result"] == str(n + 1000 * i), reply
                replies[n] = reply
            finally:
                sock.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert sorted(replies) == list(range(n_clients))
    # none of these connections is attached to a session: nothing was added
    assert all("session_id" not in req["parameters"] for req in image.requests)
    assert len(image.requests) == 5 * n_clients


def test_session_id_is_attached_for_a_connection_with_one_session(
    start: Callable[..., Running],
    ctx: zmq.Context,
    double: Callable[..., UpstreamDoubleServer],
    upstream: Callable[..., ZmqUpstream],
):
    image = double()
    r = start(upstream=upstream(image.endpoint))
    tui = connect(ctx, zmq.REQ, r.endpoint)
    other = connect(ctx, zmq.REQ, r.endpoint)
    sid = ok(call(tui, "c", "create_session", client_id="tui-1"))["session_id"]

    tui.send(b'{"id": "p1", "command": "ping"}')  # no parameters object: sent unchanged
    assert ok(json.loads(tui.recv()))["message"] == "pong"
    ok(call(tui, "p2", "ping"))  # an empty parameters object gets the session id
    ok(call(tui, "e1", "evaluate", code="1 + 2"))
    ok(call(other, "e2", "evaluate", code="2 + 2"))
    explicit = "session_" + "A" * 43
    ok(call(tui, "e3", "evaluate", code="3 + 3", session_id=explicit))

    by_id = {req["id"]: req for req in image.requests}
    assert by_id["p1"] == {"id": "p1", "command": "ping"}
    assert by_id["p2"]["parameters"] == {"session_id": sid}
    assert by_id["e1"]["parameters"] == {"code": "1 + 2", "session_id": sid}
    assert by_id["e2"]["parameters"] == {"code": "2 + 2"}  # not attached to a session
    assert by_id["e3"]["parameters"]["session_id"] == explicit  # never overwritten


def test_a_denied_request_does_not_steal_the_session(
    start: Callable[..., Running],
    ctx: zmq.Context,
    double: Callable[..., UpstreamDoubleServer],
    upstream: Callable[..., ZmqUpstream],
):
    # only a successful session command attaches a session to a connection
    image = double()
    r = start(upstream=upstream(image.endpoint))
    owner = connect(ctx, zmq.REQ, r.endpoint, identity=b"owner")
    intruder = connect(ctx, zmq.REQ, r.endpoint, identity=b"intruder")
    sid = ok(call(owner, "c", "create_session", client_id="owner"))["session_id"]
    denied = call(intruder, "r", "restore_session", session_id=sid, client_id="intruder")
    assert denied["error_code"] == "SessionNotFound"
    assert denied["error_type"] == "SessionNotFound"
    unknown = "session_" + "B" * 43
    assert call(intruder, "u", "get_session_info", session_id=unknown)["status"] == "error"

    ok(call(owner, "e1", "evaluate", code="1 + 1"))
    ok(call(intruder, "e2", "evaluate", code="2 + 2"))
    by_id = {req["id"]: req for req in image.requests}
    assert by_id["e1"]["parameters"]["session_id"] == sid
    assert "session_id" not in by_id["e2"]["parameters"]
    history = ok(call(owner, "h", "restore_session", session_id=sid))["workspace_context"]
    assert [e["source"] for e in history["workspaces"]["default"]["history"]] == ["1 + 1"]
    probe = stats(r)
    intruder_conn = connection(probe, b"intruder")
    assert intruder_conn is not None
    assert intruder_conn["sessions"] == 0


def test_no_upstream_gives_upstream_error(start: Callable[..., Running], ctx: zmq.Context):
    r = start()
    req = connect(ctx, zmq.REQ, r.endpoint)
    for command in ("ping", "evaluate"):
        reply = call(req, f"x-{command}", command, code="1")
        assert reply["status"] == "error"
        assert reply["error_code"] == "UpstreamError"
        assert "no pharo backend" in reply["error"].lower()
    # a v1 envelope (payload instead of command) is forwarded too, so: no backend
    req.send(json.dumps({"id": "v1", "payload": {"type": "ping"}}).encode())
    reply = json.loads(req.recv())
    assert (reply["id"], reply["error_code"]) == ("v1", "UpstreamError")
    assert ok(call(req, "s", "get_session_statistics"))["upstream"] is False


def test_session_commands_are_answered_while_the_upstream_is_stalled(
    start: Callable[..., Running],
    ctx: zmq.Context,
    double: Callable[..., UpstreamDoubleServer],
    upstream: Callable[..., ZmqUpstream],
):
    # the image stays silent until released (the forward's timeout, 60 s, is a hang guard):
    # the session commands must all be answered while the forward is still pending (an
    # order of events, not a measured latency: robust on a loaded box)
    image = double(stall=120.0)
    r = start(upstream=upstream(image.endpoint, timeout=60.0))
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def stalled_call() -> None:
        sock = connect(ctx, zmq.REQ, r.endpoint)
        try:
            outcome["reply"], outcome["elapsed"] = timed(
                lambda: call(sock, "slow", "evaluate", code="1 + 1")
            )
        finally:
            sock.close()
            done.set()

    t = threading.Thread(target=stalled_call)
    t.start()
    try:
        assert image.wait_requests(1), "the request never reached the image"
        other = connect(ctx, zmq.REQ, r.endpoint)
        sid = ok(call(other, "c", "create_session", client_id="busy-elsewhere"))["session_id"]
        answered_while_stalled = 0
        commands: list[tuple[str, dict[str, Any]]] = [
            ("update_session_state", {"state_data": {"n": 1}, "mode": "merge"}),
            ("restore_session", {}),
            ("get_session_info", {}),
            ("get_session_statistics", {}),
        ]
        for n, (command, params) in enumerate(commands):
            params = {"session_id": sid, **params} if command != "get_session_statistics" else {}
            result = ok(call(other, f"q{n}", command, **params))
            if not done.is_set():
                answered_while_stalled += 1
            if command == "get_session_statistics":
                assert result["pending_requests"] >= 1 or done.is_set()
        stalled = not done.is_set()
    finally:
        image.release()
        t.join(30)
    assert not t.is_alive()
    # queued behind the stalled forward they could only have come after the release
    assert stalled and answered_while_stalled == len(commands), "session commands waited"
    assert outcome["reply"]["status"] == "success", outcome["reply"]


def test_silent_upstream_gives_upstream_error_after_its_timeout(
    start: Callable[..., Running],
    ctx: zmq.Context,
    double: Callable[..., UpstreamDoubleServer],
    upstream: Callable[..., ZmqUpstream],
):
    image = double(stall=30.0)
    r = start(upstream=upstream(image.endpoint, timeout=1.0))
    sock = connect(ctx, zmq.REQ, r.endpoint)
    reply, elapsed = timed(lambda: call(sock, "slow", "evaluate", code="1 + 1"))
    assert reply["status"] == "error"
    assert reply["error_code"] == "UpstreamError"
    assert reply["details"]["timeout"] == 1.0
    assert elapsed >= 0.9, elapsed  # the timeout never fires early
    assert elapsed < 60, elapsed  # hang guard only


def test_capture_hook_records_the_evaluation_in_the_session(
    start: Callable[..., Running],
    ctx: zmq.Context,
    double: Callable[..., UpstreamDoubleServer],
    upstream: Callable[..., ZmqUpstream],
):
    image = double()
    r = start(upstream=upstream(image.endpoint))
    tui = connect(ctx, zmq.REQ, r.endpoint)
    created = ok(call(tui, "c", "create_session", client_id="tui-cap"))
    sid = created["session_id"]
    reply = call(tui, "e1", "evaluate", code="3 + 4", evaluation_mode="print")
    # the client gets the image's reply unchanged
    assert reply == {
        "id": "e1",
        "status": "success",
        "result": {
            "result": "7",
            "object_id": "obj_1",
            "class_name": "SmallInteger",
            "execution_time": 1,
        },
    }
    ok(call(tui, "e2", "evaluate", code="10 + 20", workspace="scratch"))

    fresh = connect(ctx, zmq.REQ, r.endpoint)
    restored = ok(call(fresh, "r", "restore_session", session_id=sid))
    workspaces = restored["workspace_context"]["workspaces"]
    assert workspaces["default"]["history"] == [
        {
            "source": "3 + 4",
            "printed": "7",
            "result": {"$ref": "obj_1"},
            "duration_ms": 1.0,
            "mode": "print",
        }
    ]
    assert workspaces["scratch"]["history"][0]["source"] == "10 + 20"
    assert restored["objects"]["obj_1"] == {"class_name": "SmallInteger", "print_string": "7"}
    assert restored["objects"]["obj_2"]["print_string"] == "30"
    # capture does not count as a client update
    assert restored["metadata"]["evaluations"] == 2
    assert restored["revision"] == created["revision"] + 2


def test_failing_capture_hook_does_not_change_the_reply(
    start: Callable[..., Running],
    ctx: zmq.Context,
    double: Callable[..., UpstreamDoubleServer],
    upstream: Callable[..., ZmqUpstream],
):
    image = double()
    hooks = CaptureHooks()

    def broken(request: Any, reply: Any) -> StateUpdate | None:
        raise RuntimeError("hook bug")

    hooks.register("evaluate", broken)
    r = start(upstream=upstream(image.endpoint), hooks=hooks)
    tui = connect(ctx, zmq.REQ, r.endpoint)
    sid = ok(call(tui, "c", "create_session", client_id="tui-hook"))["session_id"]
    assert ok(call(tui, "e", "evaluate", code="1 + 1"))["result"] == "2"
    assert ok(call(tui, "r", "restore_session", session_id=sid))["revision"] == 1


def test_capture_in_strict_mode_follows_rotation(
    start: Callable[..., Running],
    ctx: zmq.Context,
    double: Callable[..., UpstreamDoubleServer],
    upstream: Callable[..., ZmqUpstream],
):
    # strict mode: the restore gives the session a new id and token; evaluations
    # afterwards must land in the new session (the connection follows the rotation)
    image = double()
    r = start(
        ProtocolHandler(MemoryStore(), Policy(auth_mode="strict")),
        upstream=upstream(image.endpoint),
    )
    tui = connect(ctx, zmq.REQ, r.endpoint)
    created = ok(call(tui, "c", "create_session", client_id="tui-strict"))
    old_sid, token = created["session_id"], created["resume_token"]
    ok(call(tui, "e1", "evaluate", code="1 + 1"))
    restored = ok(
        call(
            tui,
            "r",
            "restore_session",
            session_id=old_sid,
            client_id="tui-strict",
            resume_token=token,
        )
    )
    new_sid, new_token = restored["session_id"], restored["resume_token"]
    assert new_sid != old_sid
    ok(call(tui, "e2", "evaluate", code="2 + 2"))
    by_id = {req["id"]: req for req in image.requests}
    assert by_id["e1"]["parameters"]["session_id"] == old_sid
    assert by_id["e2"]["parameters"]["session_id"] == new_sid

    again = ok(
        call(
            tui,
            "r2",
            "restore_session",
            session_id=new_sid,
            client_id="tui-strict",
            resume_token=new_token,
        )
    )
    history = again["workspace_context"]["workspaces"]["default"]["history"]
    assert [e["source"] for e in history] == ["1 + 1", "2 + 2"]


@pytest.mark.parametrize(
    "raw",
    [b"not json", b"[1, 2]", b'{"id": "x", "status": "success", "result": NaN}'],
    ids=["garbage", "not-an-object", "nan"],
)
def test_a_bad_reply_from_the_image_is_an_upstream_error(
    start: Callable[..., Running],
    ctx: zmq.Context,
    double: Callable[..., UpstreamDoubleServer],
    upstream: Callable[..., ZmqUpstream],
    raw: bytes,
):
    image = double()
    image.raw_reply = raw
    r = start(upstream=upstream(image.endpoint))
    req = connect(ctx, zmq.REQ, r.endpoint)
    reply = call(req, "bad", "evaluate", code="1")
    assert reply["status"] == "error"
    assert reply["error_code"] == "UpstreamError"


def test_lone_surrogates_pass_through_the_bridge_escaped(
    start: Callable[..., Running],
    ctx: zmq.Context,
    double: Callable[..., UpstreamDoubleServer],
    upstream: Callable[..., ZmqUpstream],
):
    # "\ud800" is valid JSON text but no UTF-8 string: it must stay an escape both ways
    image = double()
    r = start(upstream=upstream(image.endpoint))
    req = connect(ctx, zmq.REQ, r.endpoint)
    req.send(rb'{"id": "s1", "command": "evaluate", "parameters": {"code": "\ud800 + \u00e9"}}')
    reply = json.loads(req.recv())
    assert reply["status"] == "success", reply
    assert image.requests[0]["parameters"]["code"] == "\ud800 + \u00e9"
    image.raw_reply = rb'{"id": "s2", "status": "success", "result": "\udc00"}'
    req.send(request("s2", "evaluate", code="2"))
    reply = json.loads(req.recv())
    assert reply == {"id": "s2", "status": "success", "result": "\udc00"}


# -- back-pressure -----------------------------------------------------------------------------
def test_busy_when_the_pool_is_saturated(
    start: Callable[..., Running],
    ctx: zmq.Context,
    double: Callable[..., UpstreamDoubleServer],
    upstream: Callable[..., ZmqUpstream],
):
    # the image stays silent until released (the forward's 60 s timeout is a hang guard)
    image = double(stall=120.0)
    r = start(upstream=upstream(image.endpoint, timeout=60.0), workers=1, max_pending=1)
    stuck = connect(ctx, zmq.REQ, r.endpoint)
    stuck.send(request("stuck", "evaluate", code="1 + 1"))
    assert image.wait_requests(1)
    other = connect(ctx, zmq.REQ, r.endpoint)
    reply = call(other, "b1", "get_session_statistics")
    assert reply["status"] == "error"
    assert reply["error_code"] == "Busy"
    # refused at once, not queued: the stalled request has not been answered yet
    assert stuck.poll(0) == 0, "Busy came only after the stalled request"
    dealer = connect(ctx, zmq.DEALER, r.endpoint)
    dealer.send(request("b2", "create_session", client_id="late"))
    assert json.loads(dealer.recv())["error_code"] == "Busy"
    assert stuck.poll(0) == 0
    # the stalled one still gets its answer, and then the server has room again
    image.release()
    late = json.loads(stuck.recv())
    assert (late["id"], late["status"]) == ("stuck", "success")
    # (the worker counts its job as done just after queueing the reply: allow a moment)
    replies: list[dict[str, Any]] = []
    assert wait_for(
        lambda: (
            replies.append(call(other, f"b3-{len(replies)}", "get_session_statistics"))
            or replies[-1]["status"] == "success"
        )
    )
    assert replies[-1]["result"]["pending_requests"] == 1


def test_executor_shutdown_waits_at_most_its_timeout_in_all():
    # workers stuck on a silent image must not hold a stop for timeout x workers
    # 20 stuck workers and 0.5 s: a shutdown that waited per worker would take 10 s;
    # the bound is far above 0.5 s and far below 10 s (robust on a loaded box)
    release = threading.Event()
    pool = KeyedExecutor(workers=20, max_pending=30)
    try:
        for n in range(20):
            pool.submit(("c", str(n)), lambda: release.wait(60) and None)
        assert wait_for(lambda: pool.pending == 20)
        started = time.monotonic()
        pool.shutdown(timeout=0.5)
        assert time.monotonic() - started < 6.0
    finally:
        release.set()
    assert pool.drain(10)


# -- ordering ------------------------------------------------------------------------------------
def test_updates_to_one_session_apply_in_send_order_per_connection(
    start: Callable[..., Running], ctx: zmq.Context
):
    r = start(ProtocolHandler(MemoryStore(), Policy(rate_limit=None)))
    owner = connect(ctx, zmq.REQ, r.endpoint)
    sid = ok(call(owner, "c", "create_session", client_id="shared"))["session_id"]
    n_conns, per_conn = 4, 40
    dealers = [connect(ctx, zmq.DEALER, r.endpoint) for _ in range(n_conns)]
    # interleave the connections' sends; each pipelines without waiting
    for i in range(per_conn):
        for n, dealer in enumerate(dealers):
            dealer.send(
                request(
                    f"d{n}-{i}",
                    "update_session_state",
                    session_id=sid,
                    state_data={f"c{n}": i},
                    mode="merge",
                    append_history={f"conn{n}": [{"source": f"{n}:{i}"}]},
                )
            )
    revisions: dict[int, list[tuple[int, int]]] = {}
    for n, dealer in enumerate(dealers):
        for _ in range(per_conn):
            reply = json.loads(dealer.recv())
            result = ok(reply)
            conn, i = reply["id"][1:].split("-")
            assert int(conn) == n
            revisions.setdefault(n, []).append((int(i), result["revision"]))
    all_revisions: list[int] = []
    for n, got in revisions.items():
        # replies come back in send order, and each was applied after the one before
        assert [i for i, _ in got] == list(range(per_conn)), n
        revs = [rev for _, rev in got]
        assert revs == sorted(revs) and len(set(revs)) == per_conn, (n, revs)
        all_revisions += revs
    assert sorted(all_revisions) == list(range(2, 2 + n_conns * per_conn))
    restored = ok(call(owner, "r", "restore_session", session_id=sid))
    assert restored["session_state"] == {f"c{n}": per_conn - 1 for n in range(n_conns)}
    workspaces = restored["workspace_context"]["workspaces"]
    for n in range(n_conns):
        sources = [e["source"] for e in workspaces[f"conn{n}"]["history"]]
        expected = [f"{n}:{i}" for i in range(per_conn)]
        assert sources == expected[-len(sources) :]  # in order (the history may be capped)
        assert sources[-1] == f"{n}:{per_conn - 1}"


# -- connection tracking ---------------------------------------------------------------------------
def test_statistics_list_connections(start: Callable[..., Running], ctx: zmq.Context):
    r = start()
    tui = connect(ctx, zmq.REQ, r.endpoint, identity=b"tui-conn-A")
    sid = ok(call(tui, "c", "create_session", client_id="tui-A"))["session_id"]
    ok(call(tui, "u", "update_session_state", session_id=sid, state_data={"x": 1}))
    public = ok(call(tui, "s", "get_session_statistics"))
    # a client sees counts only: no client ids, no routing identities
    assert "connections" not in public
    assert "tui-A" not in json.dumps(public) and b"tui-conn-A".hex() not in json.dumps(public)
    st = stats(r)
    assert st["connected_clients"] >= 1
    assert st["attached_sessions"] == 1
    assert b"tui-conn-A".hex() not in json.dumps(st)
    me = connection(st, b"tui-conn-A")
    assert me is not None
    assert me["client_id"] == "tui-A"
    assert me["requests"] == 3
    assert me["sessions"] == 1
    assert me["idle_seconds"] < 60  # just used (a sanity bound, not a latency)
    assert sid not in json.dumps(st)  # session ids are bearer secrets: never listed
    assert st["requests_served"] >= 2
    assert st["upstream"] is False


def test_a_peer_reusing_a_connected_identity_does_not_take_it_over(
    start: Callable[..., Running], ctx: zmq.Context
):
    # issue 16 case 3: no ROUTER_HANDOVER. A newcomer presenting the routing identity
    # of a live connection is ignored by libzmq: it gets no reply, and the victim's
    # replies (in flight or later) still reach the victim.
    r = start()
    victim = connect(ctx, zmq.REQ, r.endpoint, identity=b"victim-identity")
    sid = ok(call(victim, "c", "create_session", client_id="victim"))["session_id"]
    intruder = connect(ctx, zmq.REQ, r.endpoint, identity=b"victim-identity")
    intruder.setsockopt(zmq.RCVTIMEO, 1500)
    intruder.send(request("steal", "get_session_statistics"))
    victim.send(request("mine", "get_session_info", session_id=sid))
    assert json.loads(victim.recv())["id"] == "mine"
    with pytest.raises(zmq.Again):
        intruder.recv()
    ok(call(victim, "again", "get_session_info", session_id=sid))
    intruder.close()


def test_idle_connection_disappears_and_its_session_is_detached_not_lost(
    start: Callable[..., Running], ctx: zmq.Context
):
    # idle after 60 s while the connection is checked, then after 0.2 s (a busy machine
    # could otherwise let 0.2 s pass before the first check)
    r = start(idle_timeout=60.0, sweep_interval=0.05)
    tui = connect(ctx, zmq.REQ, r.endpoint, identity=b"will-go-idle")
    created = ok(call(tui, "c", "create_session", client_id="tui-idle"))
    sid = created["session_id"]
    assert connection(stats(r), b"will-go-idle") is not None
    r.srv.tracker.idle_timeout = 0.2
    assert wait_for(lambda: connection(stats(r), b"will-go-idle") is None)
    assert r.srv.tracker.disconnects >= 1
    r.srv.tracker.idle_timeout = 60.0  # the new connection must stay while it is checked
    # detached, not lost: restorable from another connection, which it attaches to
    back = connect(ctx, zmq.REQ, r.endpoint, identity=b"came-back")
    restored = ok(call(back, "r", "restore_session", session_id=sid, client_id="tui-idle"))
    assert restored["session_id"] == sid
    assert restored["revision"] == created["revision"]
    me = connection(stats(r), b"came-back")
    assert me is not None and me["sessions"] == 1


def test_idle_connections_go_even_when_the_expiry_sweep_is_rare(
    start: Callable[..., Running], ctx: zmq.Context
):
    # the connection table must not wait for the (default 300 s) expiry sweep
    r = start(idle_timeout=0.2, sweep_interval=3600)
    tui = connect(ctx, zmq.REQ, r.endpoint, identity=b"rare-sweep")
    ok(call(tui, "c", "create_session", client_id="tui-rare"))
    assert wait_for(lambda: connection(stats(r), b"rare-sweep") is None, 10.0)


# -- graceful stop ---------------------------------------------------------------------------------
class GatedHandler(ProtocolHandler):
    """Updates wait at a gate, so requests can be held in flight."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()
        self.entered = 0
        self.cond = threading.Condition()

    def handle_wire(self, message: Any, **kwargs: Any) -> bytes:
        if b"update_session_state" in bytes(message):
            with self.cond:
                self.entered += 1
                self.cond.notify_all()
            self.gate.wait(20)
        return super().handle_wire(message, **kwargs)


def test_stop_answers_the_requests_in_flight(ctx: zmq.Context):
    handler = GatedHandler(MemoryStore())
    srv = BridgeServer(handler, "tcp://127.0.0.1:*", sweep_interval=3600)
    r = Running(srv)
    try:
        socks, sids = [], []
        for n in range(3):
            sock = connect(ctx, zmq.REQ, r.endpoint)
            sids.append(
                ok(call(sock, f"c{n}", "create_session", client_id=f"stop-{n}"))["session_id"]
            )
            socks.append(sock)
        for n, sock in enumerate(socks):
            sock.send(
                request(f"u{n}", "update_session_state", session_id=sids[n], state_data={"n": n})
            )
        with handler.cond:
            assert handler.cond.wait_for(lambda: handler.entered == 3, 10)
        srv.stop()
        time.sleep(0.2)  # serve_forever has left its loop and waits for the workers
        handler.gate.set()
        for n, sock in enumerate(socks):
            reply = json.loads(sock.recv())
            assert reply["id"] == f"u{n}"
            assert ok(reply)["revision"] == 2
        r.thread.join(20)
        assert not r.thread.is_alive()
    finally:
        handler.gate.set()
        r.shutdown()
    # what was acknowledged is in the store
    for n, sid in enumerate(sids):
        assert handler.handle(
            {"id": "r", "command": "restore_session", "parameters": {"session_id": sid}}
        )["result"]["session_state"] == {"n": n}


def test_a_large_request_is_still_ordered_with_its_session(ctx: zmq.Context):
    # the serving thread reads only the first 64 KiB of a message: parameters.session_id
    # must be found even when a large state follows it, or the request would run
    # beside the session's other requests instead of after them
    handler = GatedHandler(MemoryStore())
    r = Running(BridgeServer(handler, "tcp://127.0.0.1:*", sweep_interval=3600))
    try:
        owner = connect(ctx, zmq.REQ, r.endpoint)
        sid = ok(call(owner, "c", "create_session", client_id="big"))["session_id"]
        owner.send(request("small", "update_session_state", session_id=sid, state_data={"a": 1}))
        with handler.cond:
            assert handler.cond.wait_for(lambda: handler.entered == 1, 10)
        big = connect(ctx, zmq.DEALER, r.endpoint)
        big.send(
            request(
                "large",
                "update_session_state",
                session_id=sid,
                state_data={"blob": "x" * 200_000},
                mode="merge",
            )
        )
        time.sleep(0.3)
        with handler.cond:
            assert handler.entered == 1, "the large update ran beside the session's other one"
        handler.gate.set()
        first = ok(json.loads(owner.recv()))
        second = ok(json.loads(big.recv()))
        assert (first["revision"], second["revision"]) == (2, 3)
        assert second["session_state"] == {"a": 1, "blob": "x" * 200_000}
    finally:
        handler.gate.set()
        r.shutdown()


def test_peek_fields_reads_nested_routing_members():
    big = {"session_id": "session_" + "C" * 43, "state_data": {"x": "y" * 200_000}}
    body = json.dumps({"id": "q", "command": "update_session_state", "parameters": big}).encode()
    got = peek_fields(body, ("id", "command", "parameters"), nested={"parameters": ("session_id",)})
    assert got == {
        "id": "q",
        "command": "update_session_state",
        "parameters": {"session_id": big["session_id"]},
    }
    # sorted keys (serde_json's default map) put small members first as well
    body = json.dumps(
        {
            "command": "x",
            "id": 1,
            "parameters": {"client_id": "c", "resume_token": "t", "session_id": "s"},
        }
    ).encode()
    names = ("client_id", "session_id", "resume_token")
    got = peek_fields(body, ("id", "command", "parameters"), nested={"parameters": names})
    assert got["parameters"] == {"client_id": "c", "session_id": "s", "resume_token": "t"}
    # an empty or non-object parameters, members after it, and junk inside it
    assert peek_fields(
        b'{"parameters": {}, "id": 2}', ("parameters", "id"), nested={"parameters": names}
    ) == {
        "parameters": {},
        "id": 2,
    }
    assert peek_fields(
        b'{"parameters": [1], "id": 2}', ("parameters", "id"), nested={"parameters": names}
    ) == {
        "parameters": [1],
        "id": 2,
    }
    assert peek_fields(
        b'{"id": 3, "parameters": {"a" 1}}', ("id", "parameters"), nested={"parameters": names}
    ) == {
        "id": 3,
        "parameters": {},
    }


# -- resent requests -------------------------------------------------------------------------------
def test_resent_request_is_not_applied_twice(start: Callable[..., Running], ctx: zmq.Context):
    r = start()
    first = connect(ctx, zmq.REQ, r.endpoint)
    sid = ok(call(first, "c", "create_session", client_id="tui-resend"))["session_id"]
    body = request(
        "append-1",
        "update_session_state",
        session_id=sid,
        append_history={"default": [{"source": "Transcript show: 'once'"}]},
    )
    first.send(body)
    original = json.loads(first.recv())
    first.close()  # as if the reply had been lost: a new REQ socket resends the same request
    again = connect(ctx, zmq.REQ, r.endpoint)
    again.send(body)
    repeat = json.loads(again.recv())
    assert repeat == original
    # and a copy that is still in flight when the resend arrives (fire and forget)
    third = connect(ctx, zmq.REQ, r.endpoint)
    third.setsockopt(zmq.LINGER, 2000)
    body2 = request(
        "append-2",
        "update_session_state",
        session_id=sid,
        append_history={"default": [{"source": "second"}]},
    )
    third.send(body2)
    third.close()
    fourth = connect(ctx, zmq.REQ, r.endpoint)
    fourth.send(body2)
    assert ok(json.loads(fourth.recv()))["revision"] == original["result"]["revision"] + 1
    restored = ok(call(fourth, "r", "restore_session", session_id=sid))
    history = restored["workspace_context"]["workspaces"]["default"]["history"]
    assert [e["source"] for e in history] == ["Transcript show: 'once'", "second"]
    assert restored["revision"] == 3


def test_heavy_jobs_never_occupy_every_worker() -> None:
    """Large requests run at most max_heavy at once; small ones still find a worker."""
    pool = KeyedExecutor(workers=4, max_pending=64, max_heavy=1)
    release = threading.Event()
    running: list[str] = []
    lock = threading.Lock()

    def heavy(name: str) -> Callable[[], None]:
        def job() -> None:
            with lock:
                running.append(name)
            release.wait(10)

        return job

    try:
        for i in range(4):
            pool.submit(("c", f"h{i}"), heavy(f"h{i}"), heavy=True)
        small = threading.Event()
        pool.submit(("c", "small"), small.set)
        assert small.wait(5), "a small job waited behind heavy ones"
        with lock:
            assert len(running) == 1  # one heavy job at a time
    finally:
        release.set()
        assert pool.drain(30)
        pool.shutdown()
    assert sorted(running) == ["h0", "h1", "h2", "h3"]


def test_large_requests_run_one_at_a_time_per_process_by_default() -> None:
    """Issue 17: one costly parse at a time per process leaves the rest of the GIL and
    the cores to small requests (measured in tests/adversarial, cpu_valid_json)."""
    pool = KeyedExecutor(workers=8, max_pending=16)
    try:
        assert pool.max_heavy == 1
    finally:
        pool.shutdown()

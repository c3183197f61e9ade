"""The attacks of issue 17, each a bounded loop against a running ``serve`` (not a test module).

Each takes a :class:`~harness.Serve` (plus a scale) and returns how many attack
requests (or frames) it sent. Attack sockets stay open until the bridge has
handled everything, so what they pin is measured.
"""

from __future__ import annotations

import json
import secrets
import socket
import struct
import threading
import time
from typing import Any

import zmq

from adversarial.harness import MB, Serve, request


def idle(serve: Serve, seconds: float = 3.0) -> int:
    """No attack: the benign client alone (its unloaded latency)."""
    time.sleep(seconds)
    return 0


def _big_session(serve: Serve, client_id: str, size: int) -> str:
    """A session whose state holds *size* bytes of a highly compressible string."""
    sock = serve.socket(zmq.DEALER)
    try:
        sid: str = serve.call(sock, "c", "create_session", client_id=client_id)["result"][
            "session_id"
        ]
        changes = {"workspaces": {"default": {"variables": {"v": "x" * size}}}}
        reply = serve.call(sock, "u", "update_session_state", session_id=sid, changes=changes)
        assert reply["status"] == "success", reply
        return sid
    finally:
        sock.close()


def _non_reader(serve: Serve, identity: bytes) -> zmq.Socket[bytes]:
    sock = serve.socket(zmq.DEALER, identity=identity)
    sock.setsockopt(zmq.RCVHWM, 1)
    sock.setsockopt(zmq.RCVBUF, 4096)
    return sock


def restore_amplification(serve: Serve, restores: int = 30, connections: int = 4) -> int:
    """Restores of a large compressible state whose replies are never read."""
    sid = _big_session(serve, "amp", 7 * MB)
    socks = [_non_reader(serve, f"amp-{i}".encode()) for i in range(connections)]
    try:
        for i in range(restores):
            for sock in socks:
                sock.send(request(f"r{i}", "restore_session", session_id=sid), zmq.NOBLOCK)
        serve.wait_idle()
    finally:
        for sock in socks:
            sock.close()
    return restores * connections


def strict_reply_cache(serve: Serve, restores: int = 20) -> int:
    """Strict mode: large restore replies land in the resend-deduplication cache."""
    sock = serve.socket(zmq.DEALER)
    try:
        created = serve.call(sock, "c", "create_session", client_id="cache")["result"]
        sid, token = created["session_id"], created["resume_token"]
        changes = {"workspaces": {"default": {"variables": {"v": "x" * (7 * MB)}}}}
        reply = serve.call(
            sock,
            "u",
            "update_session_state",
            session_id=sid,
            resume_token=token,
            changes=changes,
        )
        assert reply["status"] == "success", reply
        for i in range(restores):
            reply = serve.call(sock, f"r{i}", "restore_session", session_id=sid, resume_token=token)
            assert reply["status"] == "success", reply
            result = reply["result"]
            sid = result.get("session_id", sid)
            token = result.get("resume_token", token)
    finally:
        sock.close()
    return restores


def decoded_cache(serve: Serve, sessions: int = 12) -> int:
    """Many sessions with large compressible states, each restored (and read)."""
    ids = [_big_session(serve, f"dec-{i}", 5 * MB) for i in range(sessions)]
    sock = serve.socket(zmq.DEALER)
    try:
        for i, sid in enumerate(ids):
            reply = serve.call(sock, f"r{i}", "restore_session", session_id=sid)
            assert reply["status"] == "success", reply.get("error")
    finally:
        sock.close()
    return sessions * 3


def _long_integers() -> bytes:
    values = [int("9" * 3900)] * 2000
    changes = {"workspaces": {"default": {"variables": {"v": values}}}}
    return json.dumps(
        {"id": "i", "command": "update_session_state", "parameters": {"changes": changes}}
    ).encode()


def _many_keys() -> bytes:
    big = {f"k{i}": 0 for i in range(650_000)}
    return json.dumps(
        {"id": "k", "command": "update_session_state", "parameters": {"changes": big}}
    ).encode()


def cpu_valid_json(
    serve: Serve, connections: int = 8, per_connection: int = 6, bodies: list[bytes] | None = None
) -> int:
    """Valid JSON that is expensive to parse: 3,900-digit integers and 650k keys."""
    bodies = bodies or [_long_integers(), _many_keys()]
    failures: list[Any] = []

    def attacker(n: int) -> None:
        sock = serve.socket(zmq.DEALER, timeout_ms=120_000)
        try:
            for i in range(per_connection):
                sock.send(bodies[(n + i) % len(bodies)])
                reply = json.loads(sock.recv())
                if reply.get("status") != "error":
                    failures.append(reply)
        except Exception as exc:  # reported by the test
            failures.append(repr(exc))
        finally:
            sock.close()

    threads = [threading.Thread(target=attacker, args=(n,)) for n in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not failures, failures[:3]
    return connections * per_connection


def _zmtp_dealer(endpoint: str) -> socket.socket:
    """A raw ZMTP 3.0 connection (NULL mechanism) that has said it is a DEALER.

    libzmq's own sockets only transmit a multipart message once its last frame is
    sent, so the unfinished message is written by hand, as an attacker would.
    """
    host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
    conn = socket.create_connection((host, int(port)), timeout=30)
    greeting = b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00")
    conn.sendall(greeting + b"\x00" + b"\x00" * 31)
    ready = b"\x05READY" + b"\x0bSocket-Type" + struct.pack(">I", 6) + b"DEALER"
    conn.sendall(b"\x04" + bytes([len(ready)]) + ready)
    return conn


def unfinished_multipart(serve: Serve, frames: int = 100, frame_size: int = MB) -> int:
    """Frames with the MORE flag whose last frame never comes (one connection)."""
    conn = _zmtp_dealer(serve.endpoint)
    frame = secrets.token_bytes(frame_size)
    try:
        for _ in range(frames):
            conn.sendall(b"\x03" + struct.pack(">Q", len(frame)) + frame)  # MORE | LONG
        # let the bridge's I/O thread take them all in
        deadline = time.monotonic() + 30
        meter = serve.meter
        last = -1
        while time.monotonic() < deadline:
            time.sleep(0.5)
            rss = meter.rss()
            if rss == last:
                break
            last = rss
    finally:
        conn.close()
    return frames


def forwarded_oversized(serve: Serve, requests: int = 20) -> int:
    """Non-session requests near and over the size limit (no --upstream: 'no backend')."""
    near = json.dumps(
        {"id": "f", "command": "evaluate", "parameters": {"code": "x" * 9_500_000}}
    ).encode()
    over = json.dumps(
        {"id": "o", "command": "evaluate", "parameters": {"code": "x" * 12_000_000}}
    ).encode()
    sock = serve.socket(zmq.DEALER)
    try:
        for i in range(requests):
            sock.send(near if i % 2 else over)
            reply = json.loads(sock.recv())
            assert reply["status"] == "error", reply
            assert reply["error_code"] in {"MessageTooLarge", "UpstreamError", "RateLimited"}
    finally:
        sock.close()
    return requests


def session_flood(serve: Serve, attempts: int = 2000, batch: int = 100) -> int:
    """create_session from a fresh client id each time, pipelined in batches."""
    sock = serve.socket(zmq.DEALER)
    try:
        for start in range(0, attempts, batch):
            for i in range(start, start + batch):
                sock.send(request(f"s{i}", "create_session", client_id=f"fresh-{i}"))
            for _ in range(batch):
                sock.recv()
    finally:
        sock.close()
    return attempts


def denied_flood(serve: Serve, attempts: int = 5000, batch: int = 200) -> int:
    """Restores of sessions that do not exist: refusals, then rate-limit refusals."""
    sock = serve.socket(zmq.DEALER)
    try:
        for start in range(0, attempts, batch):
            for i in range(start, start + batch):
                sid = "session_" + secrets.token_urlsafe(32)[:43]
                sock.send(request(f"d{i}", "restore_session", session_id=sid, client_id="mallory"))
            for _ in range(batch):
                sock.recv()
    finally:
        sock.close()
    return attempts


def connection_growth(serve: Serve, connections: int = 3000) -> int:
    """Many connections, each with its own routing identity, one request each."""
    for i in range(connections):
        sock = serve.socket(zmq.DEALER, identity=b"conn-%d" % i)
        try:
            sock.send(request("x", "no_such_command"))
            sock.recv()
        finally:
            sock.close()
    return connections


def _costly_bodies(integers: int, keys: int) -> list[bytes]:
    """The two costly bodies of :func:`cpu_valid_json` with fewer integers and keys."""
    ints = {"workspaces": {"default": {"variables": {"v": [int("9" * 3900)] * integers}}}}
    members = {f"k{i}": 0 for i in range(keys)}
    return [
        json.dumps(
            {"id": "c", "command": "update_session_state", "parameters": {"changes": c}}
        ).encode()
        for c in (ints, members)
    ]


def cpu_valid_json_medium(serve: Serve, connections: int = 8, per_connection: int = 12) -> int:
    """:func:`cpu_valid_json` with bodies just under 1 MiB (the 75,000 keys are parsed)."""
    return cpu_valid_json(serve, connections, per_connection, bodies=_costly_bodies(250, 75_000))


def cpu_valid_json_small(serve: Serve, connections: int = 8, per_connection: int = 400) -> int:
    """:func:`cpu_valid_json` with bodies just under 64 KiB (docs/security.md: the
    threshold of "large" was once 64 KiB; measured by hand, not by the suite)."""
    return cpu_valid_json(serve, connections, per_connection, bodies=_costly_bodies(16, 4_800))


def tiny_flood(serve: Serve, connections: int = 8, per_connection: int = 400) -> int:
    """The same closed loop with a tiny update (a plain request flood, for comparison;
    measured by hand, not by the suite)."""
    body = json.dumps(
        {"id": "t", "command": "update_session_state", "parameters": {"changes": {"k": 1}}}
    ).encode()
    return cpu_valid_json(serve, connections, per_connection, bodies=[body])


def _bodies_under(size: int) -> list[bytes]:
    """The costly bodies of :func:`cpu_valid_json`, cut to just under *size* bytes each."""
    room = size - 200  # the envelope and the nesting around the values
    bodies = _costly_bodies(max(1, room // 3902), room // 14)
    assert all(len(b) < size for b in bodies), [len(b) for b in bodies]
    return bodies


def cpu_valid_json_under_large(
    serve: Serve, connections: int = 8, per_connection: int = 400
) -> int:
    """:func:`cpu_valid_json` with bodies just under the bridge's "large" threshold."""
    from stuisession.bridge.pacing import LARGE_BYTES

    return cpu_valid_json(serve, connections, per_connection, bodies=_bodies_under(LARGE_BYTES))

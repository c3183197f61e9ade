"""One small attack of the adversarial suite end to end in the normal suite.

A real ``stuisession serve`` process; one connection asks for large restores
and never reads them. It must be dropped at its queued-bytes bound, the
bridge's memory must stay within that bound plus a margin, and a benign
client must still be answered. The full suite is ``tests/adversarial``
(``make faults``).
"""

from __future__ import annotations

import time
from pathlib import Path

import zmq

from adversarial.harness import MB, POLICY, request, serving


def test_unread_restores_drop_the_connection_and_bound_bridge_memory(tmp_path: Path) -> None:
    policy = {**POLICY, "max_queued_bytes_per_connection": 4 * MB}
    with serving(tmp_path, policy=policy) as serve:
        sock = serve.socket(zmq.DEALER)
        sid = serve.call(sock, "c", "create_session", client_id="c")["result"]["session_id"]
        changes = {"workspaces": {"default": {"variables": {"v": "x" * MB}}}}
        assert (
            serve.call(sock, "u", "update_session_state", session_id=sid, changes=changes)["status"]
            == "success"
        )
        rss_before = serve.meter.rss()
        attacker = serve.socket(zmq.DEALER, identity=b"smoke-attacker")
        attacker.setsockopt(zmq.RCVHWM, 1)
        attacker.setsockopt(zmq.RCVBUF, 4096)
        for i in range(30):  # 30 MB of replies, never read
            attacker.send(request(f"r{i}", "restore_session", session_id=sid))
        deadline = time.monotonic() + 60
        while (queues := serve.statistics()["queues"])["connections_dropped"] == 0:
            assert time.monotonic() < deadline, queues
            time.sleep(0.05)
        serve.wait_idle()
        assert queues["queued_bytes"] <= policy["max_queued_bytes"]
        # the bound (4 MB) plus the kernel's socket buffers and one decoded state, not 30 MB
        assert serve.meter.rss() - rss_before < 4 * MB + 50 * MB
        assert serve.call(sock, "s", "restore_session", session_id=sid)["status"] == "success"
        attacker.close()
        sock.close()

"""``make run`` in the background stops cleanly on ``kill $!`` (SIGTERM to make).

GNU make passes a SIGTERM on to the recipe it is running; the recipe execs the
server, so the bridge itself gets the signal, drains and exits 0 (issue 20 item 4).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

from ports import free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def test_make_run_stops_cleanly_on_sigterm_to_make(tmp_path: Path) -> None:
    make = shutil.which("make")
    assert make is not None, "GNU make is needed to test the Makefile"
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    log = tmp_path / "make.log"
    bin_dir = str(Path(sys.executable).parent)
    # RUN_STAMP= : no install step; BIN: this interpreter's environment
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                make,
                "-C",
                str(ROOT),
                "run",
                "RUN_STAMP=",
                f"BIN={bin_dir}",
                f"BIND={endpoint}",
                f"STORE={tmp_path / 'store'}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        ctx = zmq.Context()
        try:
            reply = None
            deadline = time.monotonic() + 60
            probe_ms = 500  # doubled after each silent probe, up to 5 s (a busy machine)
            while reply is None and time.monotonic() < deadline:
                sock = ctx.socket(zmq.REQ)
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.RCVTIMEO, probe_ms)
                sock.connect(endpoint)
                try:
                    sock.send_json({"id": "s", "command": "get_session_statistics"})
                    reply = json.loads(sock.recv())
                except zmq.Again:
                    probe_ms = min(2 * probe_ms, 5000)
                finally:
                    sock.close()
        finally:
            ctx.destroy(linger=0)
        assert reply is not None and reply["status"] == "success", log.read_text()
        proc.send_signal(signal.SIGTERM)  # `kill $!` of a backgrounded `make run`
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    text = log.read_text()
    assert "received SIGTERM, shutting down" in text, text
    assert "bridge stopped" in text, text
    assert "Traceback" not in text, text

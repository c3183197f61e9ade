"""SIGKILL of a writer at random points: nothing acknowledged is lost, nothing corrupt is served.

`make test` runs a quick profile (10 kills); `make faults` sets STUISESSION_FAULT_ITERATIONS=500.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stuisession import FileStore, Policy, ProtocolHandler

ITERATIONS = int(os.environ.get("STUISESSION_FAULT_ITERATIONS", "10"))
WRITER = Path(__file__).with_name("writer_process.py")


@pytest.mark.slow
def test_sigkill_writer_loses_nothing_acknowledged(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    handler = ProtocolHandler(FileStore(store_dir), Policy(rate_limit=None))
    sid = handler.handle(
        {"id": "c", "command": "create_session", "parameters": {"client_id": "w"}}
    )["result"]["session_id"]
    handler.store.close()
    rnd = random.Random(1234)
    acked: list[str] = []
    start = 0
    deadline = time.monotonic() + 300  # bounded whatever the machine's load
    for _ in range(ITERATIONS):
        if time.monotonic() > deadline:
            break
        proc = subprocess.Popen(
            [sys.executable, str(WRITER), str(store_dir), sid, str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert proc.stdout is not None
        # let it get going (imports, first writes), then kill it at a random moment
        first = proc.stdout.readline().strip()
        if first.startswith("k"):
            acked.append(first)
        time.sleep(rnd.uniform(0, 0.05))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
        lines = [x for x in out.splitlines() if x.startswith("k")]
        # a line cut by the kill is an acknowledgement the client never fully got
        acked.extend(x for x in lines if x[1:].isdigit())
        assert not any(x.startswith("ERR") for x in out.splitlines()), out
        start = int(acked[-1][1:]) + 1 if acked else start + 1
        # after every kill the store opens, and the state holds every acknowledged key
        store = FileStore(store_dir)
        state = store.load(sid).state.session_state
        missing = [k for k in acked if k not in state]
        assert not missing, f"acknowledged but lost: {missing[:5]}"
        store.close()
    assert len(acked) >= ITERATIONS
    # a kill never left a snapshot that failed its check
    assert not list((store_dir / "quarantine").iterdir())

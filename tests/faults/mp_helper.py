"""Processes for the multi-process tests (not a test module).

Usage::

    python mp_helper.py worker STORE_DIR SHARED_SID TAG N
        Prints "own <sid>" (a session of its own) and "ready", waits for a line on
        stdin, then makes N rounds of updates through its own
        ProtocolHandler(FileStore(STORE_DIR)): a merge of key TAG-j plus an
        appended history entry on the shared session, without base_revision (so
        lost compare-and-swaps are retried), and a merge on its own session;
        every third round also an update of the shared session with the
        base_revision it just read (merged automatically: other processes touch
        other keys). Each acknowledged update is printed ("ack shared TAG-j",
        "ack own TAG-j", "ack based TAG-j") only after its reply said success.
        A Conflict or StorageError reply is retried under a new request id and
        counted ("retry <type>"); anything else ends the process with status 1.

    python mp_helper.py hold STORE_DIR SECONDS
        Takes an exclusive flock on every lock file of the store, prints "held",
        and keeps the locks until stdin closes or SECONDS have passed.

    python mp_helper.py write-once STORE_DIR SID LOCK_TIMEOUT
        One update through a FileStore with that lock_timeout; prints the reply
        as JSON and the elapsed seconds.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import sys
import time
from pathlib import Path
from typing import Any

from stuisession import FileStore, Policy, ProtocolHandler

POLICY = Policy(rate_limit=None, max_sessions_per_client=1000)


class Client:
    def __init__(self, handler: ProtocolHandler, tag: str) -> None:
        self.handler = handler
        self.tag = tag
        self.n = 0

    def send(self, command: str, **params: Any) -> dict[str, Any]:
        self.n += 1
        request = {"id": f"{self.tag}-{self.n}", "command": command, "parameters": params}
        reply: dict[str, Any] = self.handler.handle(request)
        return reply

    def until_success(self, command: str, **params: Any) -> dict[str, Any]:
        for _ in range(1000):
            reply = self.send(command, **params)
            if reply["status"] == "success":
                result: dict[str, Any] = reply["result"]
                return result
            if reply["error_code"] not in ("Conflict", "StorageError"):
                print(f"ERR {json.dumps(reply)}", flush=True)
                sys.exit(1)
            print(f"retry {reply['error_code']}", flush=True)
            time.sleep(0.001)
        print("ERR no progress", flush=True)
        sys.exit(1)


def worker(store_dir: str, shared: str, tag: str, n: int) -> None:
    c = Client(ProtocolHandler(FileStore(store_dir), POLICY, dedup_ttl=None), tag)
    own = c.until_success("create_session", client_id=f"worker-{tag}")["session_id"]
    print(f"own {own}", flush=True)
    print("ready", flush=True)
    sys.stdin.readline()
    for j in range(n):
        key = f"{tag}-{j}"
        c.until_success(
            "update_session_state",
            session_id=shared,
            state_data={key: j},
            mode="merge",
            append_history={f"ws-{tag}": [{"source": key}]},
        )
        print(f"ack shared {key}", flush=True)
        c.until_success("update_session_state", session_id=own, state_data={key: j}, mode="merge")
        print(f"ack own {key}", flush=True)
        if j % 3 == 0:
            for _ in range(1000):
                base = c.until_success("get_session_info", session_id=shared)["revision"]
                reply = c.send(
                    "update_session_state",
                    session_id=shared,
                    state_data={f"based-{key}": base},
                    mode="merge",
                    base_revision=base,
                )
                if reply["status"] == "success":
                    break
                if reply["error_code"] not in ("Conflict", "StorageError"):
                    print(f"ERR {json.dumps(reply)}", flush=True)
                    sys.exit(1)
                print(f"retry {reply['error_code']}", flush=True)
            else:
                print("ERR no progress", flush=True)
                sys.exit(1)
            print(f"ack based {key}", flush=True)
    print("done", flush=True)


def hold(store_dir: str, seconds: float) -> None:
    fds = []
    for path in sorted((Path(store_dir) / "locks").iterdir()):
        fd = os.open(path, os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)
        fds.append(fd)
    print("held", flush=True)
    # until the parent closes stdin (or the safety timeout passes)
    select.select([sys.stdin], [], [], seconds)
    for fd in fds:
        os.close(fd)


def write_once(store_dir: str, sid: str, lock_timeout: float) -> None:
    handler = ProtocolHandler(FileStore(store_dir, lock_timeout=lock_timeout), POLICY)
    start = time.monotonic()
    reply = handler.handle(
        {
            "id": "once",
            "command": "update_session_state",
            "parameters": {"session_id": sid, "state_data": {"once": 1}, "mode": "merge"},
        }
    )
    print(json.dumps({"reply": reply, "elapsed": time.monotonic() - start}), flush=True)


def main() -> None:
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "worker":
        worker(args[0], args[1], args[2], int(args[3]))
    elif mode == "hold":
        hold(args[0], float(args[1]))
    elif mode == "write-once":
        write_once(args[0], args[1], float(args[2]))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()

"""The per-client session limit holds across processes and bridges (issue 14, item 5)."""

from __future__ import annotations

import multiprocessing
import threading
from pathlib import Path
from typing import Any

from guarantee_stores import OpenStore, open_store_fixture  # noqa: F401 - a fixture
from stuisession import FileStore, Policy, ProtocolHandler
from stuisession.errors import SessionError
from stuisession.service.core import SessionService

LIMIT = 5
POLICY = Policy(max_sessions_per_client=LIMIT, rate_limit=None, max_creates_per_second=None)


def _create_in_process(root: str, barrier: Any, results: Any) -> None:
    # a separate process: its own store instance, locks and memory
    service = SessionService(FileStore(root, fsync=False), POLICY)
    barrier.wait(60)
    try:
        service.create("shared-client")
        results.put("created")
    except SessionError as exc:
        results.put(f"refused:{exc.details.get('limit')}")


def test_per_client_limit_holds_across_processes(tmp_path: Path) -> None:
    root = str(tmp_path / "store")
    FileStore(root, fsync=False).close()  # the key file exists before the processes start
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(6)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_create_in_process, args=(root, barrier, results)) for _ in range(6)
    ]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert sorted(outcomes) == ["created"] * LIMIT + [f"refused:{LIMIT}"]
    active = FileStore(root, fsync=False).list_by_client("shared-client")
    assert len(active) == LIMIT


def test_per_client_limit_holds_across_two_bridges(open_store: OpenStore) -> None:
    bridges = [ProtocolHandler(service=SessionService(open_store(), POLICY)) for _ in range(2)]
    barrier = threading.Barrier(6)
    replies: list[dict[str, Any]] = []
    lock = threading.Lock()

    def create(n: int) -> None:
        barrier.wait(30)
        reply = bridges[n % 2].handle(
            {"id": n, "command": "create_session", "parameters": {"client_id": "shared"}}
        )
        with lock:
            replies.append(reply)

    threads = [threading.Thread(target=create, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    created = [r for r in replies if r["status"] == "success"]
    refused = [r for r in replies if r["status"] == "error"]
    assert len(created) == LIMIT
    assert [r["error_type"] for r in refused] == ["SessionError"]
    assert refused[0]["details"]["limit"] == LIMIT
    assert len(open_store().list_by_client("shared")) == LIMIT

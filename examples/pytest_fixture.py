"""A pytest fixture a test harness can copy: a live bridge on a free port with a temp store.

Copy the two fixtures into your ``conftest.py``; a test then asks for
``stui_bridge`` (the endpoint) or ``stui_client`` (a connected SessionClient)::

    def test_my_tool_survives_a_reconnect(stui_client):
        stui_client.open()
        stui_client.update(state_data={"workspace": "x := 1."})
        assert stui_client.restore()["session_state"] == {"workspace": "x := 1."}

Run this file with pytest to see it work.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from stuisession import FileStore, ProtocolHandler
from stuisession.bridge.server import BridgeServer
from stuisession.client import SessionClient


@pytest.fixture
def stui_bridge(tmp_path: Path) -> Iterator[str]:
    """A bridge serving a fresh file store; yields its endpoint."""
    store = FileStore(tmp_path / "sessions", fsync=False)  # fsync off: tests need no durability
    handler = ProtocolHandler(store)  # embedded defaults: no rate limit to trip a harness
    server = BridgeServer(handler, "tcp://127.0.0.1:*")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.bound_endpoint
    finally:
        server.close()
        thread.join(10)
        store.close()


@pytest.fixture
def stui_client(stui_bridge: str) -> Iterator[SessionClient]:
    """A SessionClient connected to ``stui_bridge``; its session is closed afterwards."""
    with SessionClient(stui_bridge, client_id="test-harness", close_on_exit=True) as client:
        yield client


def test_my_tool_survives_a_reconnect(stui_client: SessionClient) -> None:
    created = stui_client.open()
    updated = stui_client.update(state_data={"workspace": "x := 1."})
    assert updated["revision"] > created["revision"]
    stui_client.close_on_exit = False
    stui_client.close()  # drop the connection only; the next call reconnects
    stui_client.close_on_exit = True
    assert stui_client.restore()["session_state"] == {"workspace": "x := 1."}

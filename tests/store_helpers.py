"""Helpers shared by the file-store integrity tests (test doubles live in tests, not src)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from stuisession import ProtocolHandler
from stuisession.keys import ENV_KEYRING
from stuisession.stores.file.layout import session_stem


@pytest.fixture(autouse=True)
def no_env_keyring(monkeypatch: pytest.MonkeyPatch) -> None:
    """Import into a test module to run its tests without ``$STUISESSION_KEYRING``."""
    monkeypatch.delenv(ENV_KEYRING, raising=False)


def call_ok(h: ProtocolHandler, command: str, **params: Any) -> dict[str, Any]:
    """The ``result`` of *command* through *h*; fails the test on an error reply."""
    reply = h.handle({"id": command, "command": command, "parameters": params})
    assert reply["status"] == "success", reply
    result: dict[str, Any] = reply["result"]
    return result


def update_variable(h: ProtocolHandler, sid: str, name: str, value: int) -> dict[str, Any]:
    """Set one workspace variable of session *sid*; the update's result."""
    changes = {"workspaces": {"default": {"variables": {name: value}}}}
    return call_ok(h, "update_session_state", session_id=sid, changes=changes)


def session_files(root: Path, sid: str) -> dict[str, Path]:
    """The files of session *sid* in the file store at *root*, by kind."""
    stem = session_stem(root, sid)
    shard = root / "sessions" / stem[:2]
    return {
        "snap": shard / f"{stem}.snap",
        "backup": shard / f"{stem}.snap.1",
        "journal": shard / f"{stem}.jnl",
        "hwm": shard / f"{stem}.hwm",
    }

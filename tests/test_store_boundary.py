"""The store boundary: code outside stores/ uses only SessionStore's public methods."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import stuisession
from stuisession.keys import Keyring
from stuisession.state import lifecycle
from stuisession.state.model import Session
from stuisession.stores import FileStore, MemoryStore
from stuisession.stores.base import SessionStore, VerifyItem

SRC = Path(stuisession.__file__).parent
OUTSIDE = ("admin", "cli", "service", "protocol", "bridge")
_PRIVATE_CALL = re.compile(
    r"\._(ids|get|get_head|put|delete|read|paths|readable|client_ids|recover)\("
)
_CONCRETE_CHECK = re.compile(r"isinstance\([^)]*(FileStore|RedisStore|MemoryStore)")


def _new(store: SessionStore) -> Session:
    sid = store.new_session_id("alice")
    return lifecycle.new_session("alice", now=1000.0, timeout=3600, session_id=sid)


def _sources() -> list[Path]:
    return [p for d in OUTSIDE for p in sorted((SRC / d).rglob("*.py"))]


def test_no_module_outside_stores_calls_a_store_private_method() -> None:
    found = [
        f"{p.relative_to(SRC)}:{n}"
        for p in _sources()
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if _PRIVATE_CALL.search(line) or _CONCRETE_CHECK.search(line)
    ]
    assert found == []


@pytest.fixture(params=["memory", "file"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> SessionStore:
    if request.param == "memory":
        return MemoryStore()
    return FileStore(tmp_path / "s", keyring=Keyring.generate(), fsync=False)


def test_boundary_methods_agree_across_backends(store: SessionStore) -> None:
    s = _new(store)
    store.create(s)
    assert list(store.ids()) == [s.session_id]
    raw = store.raw_snapshot(s.session_id)
    assert raw is not None and store.codec.open(raw).info == s.info
    assert store.read_snapshot(s.session_id).info == s.info
    rows = list(store.session_rows("alice"))
    assert [(i.session_id, size is not None and size >= len(raw)) for i, size in rows] == [
        (s.session_id, True)
    ]
    assert list(store.session_rows("bob")) == []
    assert [i.session_id for i in store.verify_items() if i.generation == 0] == [s.session_id]
    assert list(store.verify()) == []
    assert list(store.verify([VerifyItem(s.session_id)])) == []


def test_verify_reports_a_damaged_snapshot_on_every_backend(
    store: SessionStore, tmp_path: Path
) -> None:
    s = _new(store)
    store.create(s)
    raw = store.raw_snapshot(s.session_id)
    assert raw is not None
    bad = raw[:-1] + bytes([raw[-1] ^ 1])
    if isinstance(store, MemoryStore):
        store.corrupt(s.session_id, bad)
    else:
        Path(store.verify_items()[0].path or "").write_bytes(bad)
    problems = list(store.verify([VerifyItem(s.session_id)]))
    assert [p.session_id for p in problems] == [s.session_id]
    assert store.local_directory == (None if isinstance(store, MemoryStore) else tmp_path / "s")

"""The whole-state save path: one validating parse, the client's bytes stored and echoed.

``update_session_state`` with ``state_data`` keeps the raw JSON text of
``state_data`` from the single parse of the request and splices it into the
journal record, the compacted snapshot and the reply; these tests check that
what comes back is exactly the value the request held, and that the checks
the second walk used to make still refuse what they refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from stuisession import _json
from stuisession.keys import Keyring
from stuisession.policy import Policy
from stuisession.protocol.handler import ProtocolHandler
from stuisession.stores.file import FileStore
from stuisession.stores.memory import MemoryStore

STATE_TEXT = (
    '{ "big": 123456789012345678901234567890123,  "neg": -98765432109876543210987,'
    ' "f": 1.0, "g": 0.1, "h": 1e5, "esc": "caf\\u00e9 \\ud83d\\ude00 \\"q\\" \\\\",'
    ' "dup": 1, "dup": 2, "nested": {"a": [[], {}, [1, [2, [3]]]], "b": "]]}{[["},'
    ' "uni": "日本" }'
)


def _wire(handler: ProtocolHandler, rid: str, command: str, params: str) -> dict[str, Any]:
    body = f'{{"id": "{rid}", "command": "{command}", "parameters": {params}}}'
    reply: dict[str, Any] = json.loads(handler.handle_wire(body.encode()))
    return reply


def _create(handler: ProtocolHandler, rid: str = "c") -> str:
    reply = _wire(handler, rid, "create_session", '{"client_id": "alice"}')
    assert reply["status"] == "success", reply
    return str(reply["result"]["session_id"])


def _save(handler: ProtocolHandler, rid: str, sid: str, state_text: str) -> dict[str, Any]:
    return _wire(
        handler,
        rid,
        "update_session_state",
        f'{{"session_id": "{sid}", "state_data": {state_text}}}',
    )


def test_whole_state_save_stores_and_echoes_exactly_the_sent_value(tmp_path: Path) -> None:
    expected = json.loads(STATE_TEXT)  # the value the client means (last duplicate wins)
    ring = Keyring.generate()
    store = FileStore(tmp_path, keyring=ring, journal_limit=0)  # every save compacts
    handler = ProtocolHandler(store, Policy(rate_limit=None))
    sid = _create(handler)
    reply = _save(handler, "u1", sid, STATE_TEXT)
    assert reply["status"] == "success", reply
    assert reply["result"]["session_state"] == expected
    assert type(reply["result"]["session_state"]["big"]) is int
    restored = _wire(handler, "r", "restore_session", f'{{"session_id": "{sid}"}}')
    assert restored["result"]["session_state"] == expected
    store.close()
    # a fresh process reads the compacted snapshot
    again = ProtocolHandler(FileStore(tmp_path, keyring=ring), Policy(rate_limit=None))
    restored = _wire(again, "r2", "restore_session", f'{{"session_id": "{sid}"}}')
    assert restored["result"]["session_state"] == expected


def test_whole_state_save_journal_record_replays_the_sent_value(tmp_path: Path) -> None:
    expected = json.loads(STATE_TEXT)
    ring = Keyring.generate()
    store = FileStore(tmp_path, keyring=ring, journal_limit=10 << 20, cache_bytes=0)
    handler = ProtocolHandler(store, Policy(rate_limit=None))
    sid = _create(handler)
    assert _save(handler, "u1", sid, STATE_TEXT)["status"] == "success"
    # a second update on top replays the first from the journal (no cache)
    reply = _wire(
        handler,
        "u2",
        "update_session_state",
        f'{{"session_id": "{sid}", "changes": '
        '{"workspaces": {"default": {"variables": {"v": 1}}}}}',
    )
    assert reply["status"] == "success", reply
    assert reply["result"]["session_state"] == expected
    store.close()
    again = ProtocolHandler(FileStore(tmp_path, keyring=ring), Policy(rate_limit=None))
    restored = _wire(again, "r2", "restore_session", f'{{"session_id": "{sid}"}}')
    assert restored["result"]["session_state"] == expected


def test_whole_state_save_still_refuses_what_the_value_checks_refuse() -> None:
    handler = ProtocolHandler(MemoryStore(), Policy(rate_limit=None))
    sid = _create(handler)
    bad = {
        "lone surrogate": '{"s": "\\ud800"}',
        "infinite number": '{"x": 1e999}',
        "overflowing decimal": '{"x": ' + "9" * 400 + ".5}",
        # state_data's object is level 0, the innermost list level 201
        "too deep": "[" * 201 + "]" * 201,
    }
    for what, text in bad.items():
        reply = _save(handler, f"b-{len(what)}", sid, "{" + f'"k": {text}' + "}")
        assert reply["status"] == "error", what
        assert reply["error_type"] == "SessionError", (what, reply)
        assert reply["details"].get("field") == "state_data", (what, reply)
    # the deepest accepted value is still accepted
    ok = _save(handler, "ok", sid, "{" + '"k": ' + "[" * 200 + "]" * 200 + "}")
    assert ok["status"] == "success", ok


def test_whole_state_save_resend_is_deduplicated_by_its_bytes() -> None:
    handler = ProtocolHandler(MemoryStore(), Policy(rate_limit=None))
    sid = _create(handler)
    first = _save(handler, "same", sid, STATE_TEXT)
    resent = _save(handler, "same", sid, STATE_TEXT)
    assert resent == first  # the remembered reply: no second revision
    other = _save(handler, "same", sid, '{"other": true}')
    assert other.get("result", {}).get("session_state") != first["result"]["session_state"]


# -- the depth bound of the single parse ---------------------------------------------------
_leaf = st.one_of(
    st.integers(), st.text(alphabet='[]{}"\\ab'), st.booleans(), st.none(), st.floats(-1, 1)
)
_json_values = st.recursive(
    _leaf,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(alphabet='[]{}"\\k', max_size=3), inner, max_size=3)
    ),
    max_leaves=30,
)


def _true_depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_true_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_true_depth(v) for v in value), default=0)
    return 0


@settings(max_examples=300, deadline=None)
@given(_json_values, st.booleans())
def test_nesting_depth_is_exact_despite_brackets_and_escapes_in_strings(
    value: Any, ascii_only: bool
) -> None:
    data = json.dumps(value, ensure_ascii=ascii_only).encode()
    depth = _true_depth(value)
    assert _json.nesting_depth(data, 100) == depth
    assert _json.nesting_depth(data, depth) == depth
    if depth:
        assert _json.nesting_depth(data, depth - 1) is None


def test_raw_text_of_a_duplicate_parameters_object_is_the_last_one() -> None:
    parsed = _json.loads_request(
        '{"parameters": {"state_data": {"a": 1}}, "parameters": {"x": 1}}',
        _json.Limits(),
        frozenset({"state_data"}),
    )
    assert parsed.value == {"parameters": {"x": 1}}
    assert parsed.raw == {}


# -- creates near the floor ----------------------------------------------------------------
def _twenty_creates(root: Path, make_shards: bool, monkeypatch: Any) -> tuple[list[str], list[str]]:
    """(mkdir paths, fsynced paths) of 20 creates for new clients in a new store."""
    import os

    store = FileStore(root, keyring=Keyring.generate(), make_shards=make_shards)
    handler = ProtocolHandler(store, Policy(rate_limit=None, max_creates_per_second=None))
    mkdirs: list[str] = []
    synced: list[str] = []
    real_mkdir, real_fsync = os.mkdir, os.fsync

    def counting_mkdir(path: Any, *args: Any, **kw: Any) -> None:
        mkdirs.append(str(path))
        real_mkdir(path, *args, **kw)

    def counting_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "mkdir", counting_mkdir)
    monkeypatch.setattr(os, "fsync", counting_fsync)
    try:
        for i in range(20):  # new clients: each lands in a shard of its own
            reply = _wire(handler, f"c{i}", "create_session", f'{{"client_id": "client-{i}"}}')
            assert reply["status"] == "success", reply
    finally:
        monkeypatch.undo()
        store.close()
    return mkdirs, synced


def test_file_store_create_makes_no_directory_with_its_shards_made(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """With ``make_shards`` (as ``serve`` opens a file store) a new client's first
    session costs no ``mkdir`` and no fsync of ``sessions/``: only its own files'
    writes. Without it, the same creates do make directories (the test can fail)."""
    import os

    mkdirs, synced = _twenty_creates(tmp_path / "made", True, monkeypatch)
    assert mkdirs == []
    assert os.path.realpath(tmp_path / "made" / "sessions") not in synced
    mkdirs, synced = _twenty_creates(tmp_path / "lazy", False, monkeypatch)
    assert len(mkdirs) >= 15  # a few clients may share a shard
    assert os.path.realpath(tmp_path / "lazy" / "sessions") in synced


def test_memory_store_lists_a_clients_sessions_from_its_index() -> None:
    store = MemoryStore()
    handler = ProtocolHandler(store, Policy(rate_limit=None, max_creates_per_second=None))
    ids = {
        c: [
            _wire(handler, f"{c}{k}", "create_session", f'{{"client_id": "{c}"}}')["result"][
                "session_id"
            ]
            for k in range(3)
        ]
        for c in ("alice", "bob")
    }
    assert {i.session_id for i in store.list_by_client("alice")} == set(ids["alice"])
    assert store.delete(ids["alice"][0])
    assert {i.session_id for i in store.list_by_client("alice")} == set(ids["alice"][1:])
    assert {i.session_id for i in store.list_by_client("bob")} == set(ids["bob"])
    assert list(store.list_by_client("carol")) == []


def test_cache_keeps_the_latest_session_larger_than_its_bound(tmp_path: Path) -> None:
    """A session bigger than the whole cache bound stays decoded (one such slot), so
    updates of one big session do not decode it each time; cache_bytes=0 keeps nothing."""
    ring = Keyring.generate()
    big = '{"blob": "' + "x" * 200_000 + '"}'
    for cache_bytes, kept in ((64 * 1024, True), (0, False)):
        store = FileStore(tmp_path / str(cache_bytes), keyring=ring, cache_bytes=cache_bytes)
        handler = ProtocolHandler(store, Policy(rate_limit=None))
        sid = _create(handler)
        assert _save(handler, "big", sid, big)["status"] == "success"
        store.load(sid)
        head = store._cache.get(sid)
        assert (head is not None and head.session is not None) is kept
        if kept:
            assert head is not None and head.cost > cache_bytes
            assert store.cache_size == head.cost
            # a second big session takes the slot: memory stays the bound plus one session
            other = _create(handler, "c2")
            assert other != sid
            assert _save(handler, "big2", other, big)["status"] == "success"
            store.load(other)
            assert store._cache.get(sid) is None
        else:
            assert store.cache_size == 0
        store.close()

"""The file store's client index: client-sharded session ids and index markers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stuisession import FileStore
from stuisession.ids import is_valid_session_id
from stuisession.keys import ENV_KEYRING, Keyring
from stuisession.state import lifecycle
from stuisession.stores.file.layout import session_stem

NOW = 1_700_000_000.0


@pytest.fixture(autouse=True)
def _no_env_keyring(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_KEYRING, raising=False)


def test_session_ids_carry_no_visible_client_prefix(tmp_path: Path) -> None:
    store = FileStore(tmp_path, keyring=Keyring.generate())
    shard = store.client_shard("alice")
    assert shard is not None and len(shard) == 2
    ids = {store.new_session_id("alice") for _ in range(50)}
    assert len(ids) == 50 and all(is_valid_session_id(s) for s in ids)
    # 256 random bits: one client's ids share no prefix (50 ids in one shard by
    # chance: 4096**-49)
    assert len({s[8:10] for s in ids}) > 1
    assert len({s[:12] for s in ids}) == 50
    # keyed: another store maps clients elsewhere (ids reveal nothing of the client)
    shards = {
        FileStore(tmp_path / str(i), keyring=Keyring.generate()).client_shard("alice")
        for i in range(8)
    }
    assert len(shards) > 1


def test_listing_reads_only_the_clients_shard(tmp_path: Path) -> None:
    store = FileStore(tmp_path, keyring=Keyring.generate(), fsync=False)
    mine = []
    for client in ("alice", "bob", "carol"):
        for _ in range(3):
            s = lifecycle.new_session(
                client, now=NOW, timeout=60, session_id=store.new_session_id(client)
            )
            store.create(s)
            if client == "alice":
                mine.append(s.session_id)
    ids = store._client_ids("alice")
    assert ids is not None
    listed = list(ids)
    assert set(mine) <= set(listed)
    assert len(listed) < 9 or store.client_shard("bob") == store.client_shard("alice")
    assert sorted(i.session_id for i in store.list_by_client("alice")) == sorted(mine)


def test_sessions_with_foreign_ids_get_a_marker(tmp_path: Path) -> None:
    ring = Keyring.generate()
    store = FileStore(tmp_path, keyring=ring, fsync=False)
    # an id chosen elsewhere (an import, a test harness): its shard is random
    s = lifecycle.new_session("alice", now=NOW, timeout=60)
    while s.session_id[8:10] == store.client_shard("alice"):
        s = lifecycle.new_session("alice", now=NOW, timeout=60)
    store.create(s)
    stem = session_stem(tmp_path, s.session_id, ring)
    marker = tmp_path / "sessions" / str(store.client_shard("alice")) / f"{stem}.ref"
    assert marker.exists()
    assert [i.session_id for i in store.list_by_client("alice")] == [s.session_id]
    assert [i.session_id for i in FileStore(tmp_path, keyring=ring).list_by_client("alice")] == [
        s.session_id
    ]
    assert store.delete(s.session_id)
    assert not marker.exists()
    assert store.list_by_client("alice") == []


def test_version_1_stores_are_still_served_by_a_scan(tmp_path: Path) -> None:
    ring = Keyring.generate()
    (tmp_path / "format.json").write_text(
        json.dumps({"format": "stuisession-file-store", "version": 1, "lock_stripes": 64})
    )
    store = FileStore(tmp_path, keyring=ring, fsync=False)
    assert store.client_shard("alice") is None
    assert store._client_ids("alice") is None
    sid = store.new_session_id("alice")
    store.create(lifecycle.new_session("alice", now=NOW, timeout=60, session_id=sid))
    assert [i.session_id for i in store.list_by_client("alice")] == [sid]


def test_format_without_shard_key_is_refused(tmp_path: Path) -> None:
    from stuisession.errors import ConfigurationError

    (tmp_path / "format.json").write_text(
        json.dumps({"format": "stuisession-file-store", "version": 2, "lock_stripes": 64})
    )
    with pytest.raises(ConfigurationError, match="client_shard_key"):
        FileStore(tmp_path, keyring=Keyring.generate())

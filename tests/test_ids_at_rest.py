"""Session and client ids are never at rest in clear (issue 16).

A copy of a file store (every file: snapshots, backups, journals, high-water
marks, client index markers, quarantine, format.json, the audit log) and
everything a Redis store keeps (every key name and value, and the server's RDB
and AOF files) hold no session id and no client id -- neither as raw bytes nor
as they appear in JSON. Snapshots of the earlier format (record in clear) still
open, and are rewritten in the current format on their next write.

Each check is shown able to fail: the same search finds the ids in what the
earlier formats wrote (a format-1 snapshot, a layout-1 Redis store).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from redis_server import RedisServer
from stuisession import FileStore, ManualClock, Policy, ProtocolHandler
from stuisession import _json as jsonutil
from stuisession.admin import core as admin
from stuisession.codec import journal as journal_codec
from stuisession.codec.snapshot import FORMAT_VERSION, SnapshotCodec, parse_header
from stuisession.keys import ENV_KEYRING, Keyring
from stuisession.security.audit import AuditLog
from stuisession.state.forms import unstructure_info
from stuisession.stores.base import SessionStore
from stuisession.stores.file.layout import session_stem
from stuisession.stores.redis import RedisStore

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN_RING = Keyring.from_json((FIXTURES / "golden-keyring.json").read_text())
#: client ids that are easy to find, one of them outside ASCII (JSON may escape it)
CLIENTS = ("alice-7f3a9c", "Ünïcødé-bøb-42")


@pytest.fixture(autouse=True)
def _no_env_keyring(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_KEYRING, raising=False)


def needles(ids: Iterable[str]) -> dict[bytes, str]:
    """Every byte form an id may take at rest: raw UTF-8 and each JSON spelling."""
    found: dict[bytes, str] = {}
    for value in ids:
        for form in (
            value.encode("utf-8"),
            json.dumps(value).encode(),  # ASCII with \\u escapes
            json.dumps(value, ensure_ascii=False).encode("utf-8"),
            jsonutil.dumps(value),
        ):
            found[form] = value
            found[form.strip(b'"')] = value
    return found


def leaks(blobs: Iterable[tuple[str, bytes]], ids: Iterable[str]) -> list[tuple[str, str]]:
    """(where, id) for every id found in any of *blobs* (named by where they came from)."""
    forms = needles(ids)
    return sorted(
        {(where, value) for where, data in blobs for form, value in forms.items() if form in data}
    )


def files_of(root: Path) -> Iterator[tuple[str, bytes]]:
    """Every file under *root*: its relative path (names leak too) and its bytes."""
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        yield f"name of {rel}", rel.encode("utf-8")
        if path.is_file():
            yield rel, path.read_bytes()


def _call(h: ProtocolHandler, command: str, **params: Any) -> dict[str, Any]:
    reply = h.handle(
        {"id": f"{command}-{time.monotonic_ns()}", "command": command, "parameters": params}
    )
    assert reply["status"] == "success", reply
    result: dict[str, Any] = reply["result"]
    return result


def exercise(h: ProtocolHandler, clock: ManualClock, store: SessionStore) -> list[str]:
    """Create, update (journal records, compactions, backups), read and close sessions."""
    sids: list[str] = []
    tokens: dict[str, str] = {}
    for client in CLIENTS:
        for _ in range(2):
            created = _call(h, "create_session", client_id=client)
            sids.append(created["session_id"])
            if created.get("client_token"):
                tokens.setdefault(client, created["client_token"])
    for i, sid in enumerate(sids):
        for n in range(3):
            changes = {"workspaces": {"main": {"variables": {"n": n, "i": i}}}}
            _call(h, "update_session_state", session_id=sid, changes=changes)
            clock.advance(5)
        h.handle({"id": "r", "command": "restore_session", "parameters": {"session_id": sid}})
        _call(h, "get_session_info", session_id=sid)  # accesses: record-only writes
        store.load_snapshot(sid)  # compacts the journal: a backup appears
        _call(h, "update_session_state", session_id=sid, state_data={"after": i})
    for client in CLIENTS:
        _call(h, "list_client_sessions", client_id=client, client_token=tokens[client])
    _call(h, "close_session", session_id=sids[0])
    return sids


# -- (1) a copy of a file store -----------------------------------------------------------
def test_a_copy_of_a_file_store_holds_no_session_or_client_id(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = FileStore(root, fsync=False, backups=2)
    clock = ManualClock()
    audit = AuditLog(root / "audit.log", keyring=store.codec.keyring, clock=clock, fsync=False)
    h = ProtocolHandler(store, Policy(rate_limit=None), clock=clock, audit=audit)
    sids = exercise(h, clock, store)
    # every reader of the record still works on the sealed records
    assert sorted(store.ids()) == sorted(sids)
    assert {i.session_id for i in store.list_by_client(CLIENTS[1])} == set(sids[2:])
    assert list(store.verify()) == []
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    store.close()
    found = list(files_of(copy))
    kinds = {Path(where).suffix for where, _ in found if not where.startswith("name of")}
    assert {".snap", ".1", ".2", ".jnl", ".hwm", ".ref", ".log", ".json"} <= kinds
    assert leaks(found, sids) == []
    # client ids: nowhere but in the audit log's ``client_id`` field, which names the
    # client for the operator by design (docs/security.md); the rest of each line is clean
    assert leaks([f for f in found if f[0] != "audit.log"], CLIENTS) == []
    audit_lines = (copy / "audit.log").read_bytes().splitlines()
    assert audit_lines
    rest = [
        (
            "audit.log",
            jsonutil.dumps({k: v for k, v in json.loads(line).items() if k != "client_id"}),
        )
        for line in audit_lines
    ]
    assert leaks(rest, CLIENTS) == []


def test_the_search_finds_ids_in_a_snapshot_of_the_earlier_format(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store", fsync=False)
    h = ProtocolHandler(store, Policy(rate_limit=None), clock=ManualClock())
    sid = _call(h, "create_session", client_id=CLIENTS[1])["session_id"]
    old = as_format_1(store.codec, store.load_snapshot(sid).blob)
    assert leaks([("old.snap", old)], [sid, CLIENTS[1]]) == [
        ("old.snap", sid),
        ("old.snap", CLIENTS[1]),
    ]


# -- (2) everything a Redis store keeps ----------------------------------------------------
def redis_contents(server: RedisServer, client: Any) -> Iterator[tuple[str, bytes]]:
    """Every key name, every value (typed reads and DUMP), then the RDB and AOF files."""
    for key in sorted(client.scan_iter(match="*")):
        name = key.decode("utf-8", "replace")
        yield f"key {name}", key
        kind = client.type(key)
        if kind == b"hash":
            for field, value in client.hgetall(key).items():
                yield f"{name} {field.decode()}", field + b"\0" + value
        elif kind == b"zset":
            yield name, b"\0".join(client.zrange(key, 0, -1))
        elif kind == b"set":
            yield name, b"\0".join(sorted(client.smembers(key)))
        elif kind == b"string":
            yield name, client.get(key)
        else:  # pragma: no cover - the store writes no other types
            raise AssertionError(f"unexpected key type {kind!r}")
        yield f"DUMP {name}", client.dump(key)
    client.save()
    yield from files_of(server.dir)


@pytest.fixture
def private_redis(redis_server_factory: Callable[..., RedisServer]) -> RedisServer:
    # uncompressed RDB, AOF on: the files on the server's disk are searchable as well
    return redis_server_factory(
        extra_args=["--rdbcompression", "no", "--appendonly", "yes", "--appendfsync", "always"]
    )


@pytest.mark.parametrize("layout", [3, 1])
def test_a_redis_store_holds_no_session_or_client_id_in_keys_or_values(
    private_redis: RedisServer, layout: int
) -> None:
    store = RedisStore(
        private_redis.url, keyring=Keyring.generate(), layout=None if layout == 3 else 1
    )
    clock = ManualClock()
    try:
        assert store.layout == layout
        h = ProtocolHandler(store, Policy(rate_limit=None), clock=clock)
        sids = exercise(h, clock, store)
        assert sorted(store.ids()) == sorted(sids)
        assert {i.session_id for i in store.list_by_client(CLIENTS[0])} == set(sids[:2])
        assert list(store.verify()) == []
        found = leaks(redis_contents(private_redis, store.client), [*sids, *CLIENTS])
    finally:
        store.close()
    if layout == 3:
        assert found == []
    else:  # the earlier layout names keys by ids: the search finds every one of them
        assert {value for _, value in found} == set(sids)


# -- (3) snapshots of the earlier format --------------------------------------------------
def as_format_1(codec: SnapshotCodec, blob: bytes) -> bytes:
    """*blob* re-framed as format 1 wrote it: the record as plain JSON, the same sealed state."""
    h = parse_header(blob)
    meta = jsonutil.dumps(unstructure_info(codec.read_info(blob)))
    kid = h.key_id.encode()
    header = struct.pack(
        ">4sBBHBBII", b"STSN", 1, h.flags, h.schema_version, len(kid), 0, len(meta), h.payload_len
    )
    mac_key = codec.keyring.mac_key(h.key_id)
    head = header + kid + meta
    head_tag = hmac.new(mac_key, b"STSN-head" + head, hashlib.sha256).digest()
    payload = blob[h.payload_offset : h.payload_offset + h.payload_len]
    body = head + head_tag + payload
    return body + hmac.new(mac_key, body, hashlib.sha256).digest()


@pytest.mark.parametrize(
    "path", sorted((FIXTURES / "snapshots").glob("*.snap")), ids=lambda p: p.name
)
def test_snapshots_of_format_1_open_and_are_rewritten_in_the_current_format(path: Path) -> None:
    codec = SnapshotCodec(GOLDEN_RING)
    old = path.read_bytes()  # written by the release before the record was sealed
    assert parse_header(old).format_version == 1
    snap = codec.open(old)
    assert codec.read_info(old) == snap.info
    assert snap.info.session_id.encode() in old
    new = codec.rewrite_info(snap, snap.info)
    assert parse_header(new).format_version == FORMAT_VERSION == 2
    assert leaks([("new", new)], [snap.info.session_id, snap.info.client_id]) == []
    again = codec.open(new, expected_session_id=snap.info.session_id)
    assert again.info == snap.info
    assert again.state_json() == snap.state_json()  # the sealed state was kept as it was


@pytest.mark.parametrize("journal", [True, False])
def test_a_file_store_upgrades_an_old_format_snapshot_on_its_next_write(
    tmp_path: Path, journal: bool
) -> None:
    root = tmp_path / "store"
    store = FileStore(root, fsync=False, journal=journal, cache_bytes=0)
    clock = ManualClock()
    h = ProtocolHandler(store, Policy(rate_limit=None), clock=clock)
    sid = _call(h, "create_session", client_id=CLIENTS[1])["session_id"]
    _call(h, "update_session_state", session_id=sid, state_data={"a": 1})
    snap = store.load_snapshot(sid)  # folds the journal: the snapshot is the whole state
    stem = session_stem(root, sid, store.codec.keyring)
    current = root / "sessions" / stem[:2] / f"{stem}.snap"
    current.write_bytes(as_format_1(store.codec, snap.blob))  # as the earlier release left it
    # every reader: the record, the state, listings, verification
    reopened = FileStore(root, fsync=False, journal=journal, cache_bytes=0)
    assert reopened.load_info(sid) == snap.info
    assert reopened.load(sid) == snap.session()
    assert [i.session_id for i in reopened.list_by_client(CLIENTS[1])] == [sid]
    assert list(reopened.ids()) == [sid]
    assert list(reopened.verify()) == []
    assert parse_header(current.read_bytes()).format_version == 1  # reads write nothing
    h = ProtocolHandler(reopened, Policy(rate_limit=None), clock=clock)
    _call(h, "update_session_state", session_id=sid, state_data={"a": 2})
    assert parse_header(current.read_bytes()).format_version == FORMAT_VERSION
    assert leaks([("snap", current.read_bytes())], [sid, CLIENTS[1]]) == []
    assert reopened.load(sid).state.session_state["a"] == 2


def test_a_journal_of_version_2_is_read_and_folded_on_the_next_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "store"
    store = FileStore(root, fsync=False, cache_bytes=0)
    clock = ManualClock()
    h = ProtocolHandler(store, Policy(rate_limit=None), clock=clock)
    sid = _call(h, "create_session", client_id=CLIENTS[0])["session_id"]
    with monkeypatch.context() as m:  # write as the earlier release did: records in clear
        m.setattr(journal_codec, "VERSION", 2)
        _call(h, "update_session_state", session_id=sid, state_data={"a": 1})
    stem = session_stem(root, sid, store.codec.keyring)
    jnl = root / "sessions" / stem[:2] / f"{stem}.jnl"
    assert jnl.read_bytes()[4] == 2 and sid.encode() in jnl.read_bytes()
    reopened = FileStore(root, fsync=False, cache_bytes=0)
    h = ProtocolHandler(reopened, Policy(rate_limit=None), clock=clock)
    assert reopened.load(sid).state.session_state["a"] == 1
    _call(h, "update_session_state", session_id=sid, state_data={"a": 2})
    assert sid.encode() not in jnl.read_bytes()
    assert reopened.load(sid).state.session_state["a"] == 2


def test_a_key_rotation_upgrades_every_old_format_snapshot(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = FileStore(root, fsync=False, cache_bytes=0)
    h = ProtocolHandler(store, Policy(rate_limit=None), clock=ManualClock())
    sids = [_call(h, "create_session", client_id=c)["session_id"] for c in CLIENTS]
    paths = []
    for sid in sids:
        snap = store.load_snapshot(sid)
        stem = session_stem(root, sid, store.codec.keyring)
        path = root / "sessions" / stem[:2] / f"{stem}.snap"
        path.write_bytes(as_format_1(store.codec, snap.blob))
        paths.append(path)
    reopened = FileStore(root, fsync=False, cache_bytes=0)
    report = admin.rotate_keys(reopened, key_file=root / "keyring.json")
    assert report.resealed == len(sids) and not report.failed
    for path in paths:
        assert parse_header(path.read_bytes()).format_version == FORMAT_VERSION
    assert leaks(((p.name, p.read_bytes()) for p in paths), [*sids, *CLIENTS]) == []

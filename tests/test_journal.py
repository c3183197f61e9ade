"""The per-session delta journal: record format, FileStore behaviour, crash safety.

Record level: sealing, chaining, torn tails, damage. Store level: updates go
to the journal, a cold store replays it, restores compact it, stale journals
left by a crash are ignored, other processes' appends are picked up, the
decoded-session cache stays within its bound, and failed appends lose nothing.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stuisession import FileStore, ManualClock, MemoryStore, Policy, ProtocolHandler
from stuisession._json import resolve_raw
from stuisession.codec import journal
from stuisession.codec.snapshot import SnapshotCodec
from stuisession.errors import ConflictError, IntegrityError, StorageError
from stuisession.keys import ENV_KEYRING, Keyring
from stuisession.service.core import SessionService
from stuisession.state.lifecycle import new_session, with_state
from stuisession.state.model import SessionInfo
from stuisession.state.updates import StateUpdate
from stuisession.stores.file.layout import session_stem
from volume import examples

NOW = 1_700_000_000.0


@pytest.fixture(autouse=True)
def _no_env_keyring(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_KEYRING, raising=False)


# -- record level ---------------------------------------------------------------------
def _info(revision: int, sid: str = "session_" + "A" * 43) -> SessionInfo:
    return new_session("c", now=NOW, timeout=60, session_id=sid).info.__class__(
        session_id=sid,
        client_id="c",
        created_at=NOW,
        last_accessed=NOW + revision,
        last_modified=NOW + revision,
        expires_at=NOW + 60 + revision,
        timeout=60,
        revision=revision,
    )


@pytest.fixture
def codec() -> SnapshotCodec:
    return SnapshotCodec(Keyring.generate())


def _chain(codec: SnapshotCodec, base: bytes, n: int, payload: bytes = b'{"x":1}') -> bytes:
    data = journal.header(base)
    prev = base
    for i in range(n):
        rec = journal.seal(
            codec,
            _info(2 + i),
            kind=journal.KIND_UPDATE,
            base_tag=base,
            prev_tag=prev,
            payload=payload * (1 + i * 100),
        )
        data += rec
        prev = rec[-36:-4]
    return data


def _open(codec: SnapshotCodec, data: bytes, base: bytes) -> list[journal.JournalRecord]:
    return journal.open_records(
        codec,
        data,
        start=journal.HEADER_SIZE,
        base_tag=base,
        prev_tag=base,
        session_id="session_" + "A" * 43,
    )


def test_records_round_trip_sealed_and_chained(codec: SnapshotCodec) -> None:
    base = os.urandom(32)
    data = _chain(codec, base, 3, b'{"secret":"hunter2"}')
    records = _open(codec, data, base)
    assert [r.info.revision for r in records] == [2, 3, 4]
    assert records[0].payload == b'{"secret":"hunter2"}'
    assert records[-1].end == len(data)
    assert b"hunter2" not in data  # encrypted at rest
    assert journal.base_of(data) == base


def test_torn_tail_is_ignored_at_every_cut(codec: SnapshotCodec) -> None:
    base = os.urandom(32)
    full = _chain(codec, base, 2)
    first_end = _open(codec, full, base)[0].end
    for cut in range(first_end, len(full)):
        records = _open(codec, full[:cut], base)
        assert [r.info.revision for r in records] == [2]


@pytest.mark.parametrize("where", ["first", "last"])
def test_damaged_complete_record_is_an_integrity_error(codec: SnapshotCodec, where: str) -> None:
    base = os.urandom(32)
    data = bytearray(_chain(codec, base, 2))
    first_end = _open(codec, bytes(data), base)[0].end
    pos = journal.HEADER_SIZE + 30 if where == "first" else first_end + 30
    data[pos] ^= 0x01
    with pytest.raises(IntegrityError):
        _open(codec, bytes(data), base)


def test_records_can_not_be_dropped_reordered_or_moved(codec: SnapshotCodec) -> None:
    base = os.urandom(32)
    data = _chain(codec, base, 3)
    r = _open(codec, data, base)
    one = data[journal.HEADER_SIZE : r[0].end]
    two = data[r[0].end : r[1].end]
    three = data[r[1].end :]
    for forged in (one + three, two + one + three, one + two + two):
        with pytest.raises(IntegrityError):
            _open(codec, data[: journal.HEADER_SIZE] + forged, base)
    with pytest.raises(IntegrityError):  # bound to its base snapshot
        _open(codec, data, os.urandom(32))
    with pytest.raises(IntegrityError):  # and to its session
        journal.open_records(
            codec,
            data,
            start=journal.HEADER_SIZE,
            base_tag=base,
            prev_tag=base,
            session_id="session_" + "B" * 43,
        )


def test_unknown_key_and_bad_lengths(codec: SnapshotCodec) -> None:
    base = os.urandom(32)
    data = _chain(codec, base, 1)
    with pytest.raises(IntegrityError, match="not in the keyring"):
        _open(SnapshotCodec(Keyring.generate()), data, base)
    bad = bytearray(data)
    bad[journal.HEADER_SIZE : journal.HEADER_SIZE + 4] = (2**31).to_bytes(4, "big")
    with pytest.raises(IntegrityError, match=r"implausible|length is damaged"):
        _open(codec, bytes(bad), base)
    bad = bytearray(data)
    bad[-1] ^= 0x01  # the trailing length
    with pytest.raises(IntegrityError, match="lengths differ"):
        _open(codec, bytes(bad), base)
    assert journal.base_of(b"short") is None
    assert journal.base_of(b"XXXX" + bytes(36)) is None


# -- store level ----------------------------------------------------------------------
#: the keyring of each store a test opened (files are named by a keyed hash of the id)
RINGS: dict[Path, Keyring] = {}


def _handler(root: Path, ring: Keyring, **kw: Any) -> ProtocolHandler:
    clock = kw.pop("clock", None)
    RINGS[root] = ring
    return ProtocolHandler(
        service=SessionService(
            FileStore(root, keyring=ring, **kw), Policy(rate_limit=None), clock=clock
        )
    )


_IDS = iter(range(10**9))


def _call(h: ProtocolHandler, command: str, **params: Any) -> dict[str, Any]:
    # a fresh id per call: a repeated id with the same content is a resend
    reply = h.handle({"id": f"t{next(_IDS)}", "command": command, "parameters": params})
    assert reply["status"] == "success", reply
    return resolve_raw(reply["result"])  # type: ignore[no-any-return]


def _set_var(h: ProtocolHandler, sid: str, name: str, value: Any) -> dict[str, Any]:
    return _call(
        h,
        "update_session_state",
        session_id=sid,
        changes={"workspaces": {"default": {"variables": {name: value}}}},
    )


def _files(root: Path, sid: str, ring: Keyring | None = None) -> tuple[Path, Path]:
    stem = session_stem(root, sid, ring or RINGS.get(root))
    shard = root / "sessions" / stem[:2]
    return shard / f"{stem}.snap", shard / f"{stem}.jnl"


def _variables(h: ProtocolHandler, sid: str) -> dict[str, Any]:
    state = _call(h, "restore_session", session_id=sid)
    return state["workspace_context"]["workspaces"]["default"]["variables"]  # type: ignore[no-any-return]


@pytest.fixture
def ring() -> Keyring:
    return Keyring.generate()


def test_updates_append_to_the_journal_and_a_cold_store_replays_them(
    tmp_path: Path, ring: Keyring
) -> None:
    h = _handler(tmp_path, ring)
    sid = _call(h, "create_session", client_id="c")["session_id"]
    snap, jnl = _files(tmp_path, sid)
    before = snap.read_bytes()
    for i in range(5):
        assert _set_var(h, sid, f"v{i}", i)["revision"] == i + 2
    assert snap.read_bytes() == before  # the snapshot was not rewritten
    assert jnl.stat().st_size > journal.HEADER_SIZE
    cold = FileStore(tmp_path, keyring=ring)
    assert cold.load_info(sid).revision == 6
    session = cold.load(sid)
    assert session.revision == 6
    assert session.state.workspaces["default"].variables == {f"v{i}": i for i in range(5)}
    assert session.state.metadata.updates == 5


def test_restore_compacts_and_hands_over_stored_bytes(tmp_path: Path, ring: Keyring) -> None:
    h = _handler(tmp_path, ring)
    sid = _call(h, "create_session", client_id="c")["session_id"]
    _set_var(h, sid, "x", 1)
    snap, jnl = _files(tmp_path, sid)
    assert _variables(h, sid) == {"x": 1}
    assert jnl.stat().st_size == 0  # folded into the snapshot
    opened = FileStore(tmp_path, keyring=ring).codec.open(snap.read_bytes())
    assert opened.info.revision == 2
    assert opened.state().workspaces["default"].variables == {"x": 1}
    # a second restore reads the new snapshot as it is
    before = snap.stat().st_ino
    assert _variables(h, sid) == {"x": 1}
    assert snap.stat().st_ino == before


def test_access_time_is_a_journal_record_and_does_not_force_compaction(
    tmp_path: Path, ring: Keyring
) -> None:
    clock = ManualClock(NOW)
    h = _handler(tmp_path, ring, clock=clock)
    sid = _call(h, "create_session", client_id="c")["session_id"]
    snap, jnl = _files(tmp_path, sid)
    ino = snap.stat().st_ino
    clock.advance(120)  # past the touch granularity: the restore records the access
    _call(h, "restore_session", session_id=sid)
    assert jnl.stat().st_size > journal.HEADER_SIZE
    clock.advance(1)
    _call(h, "restore_session", session_id=sid)
    assert snap.stat().st_ino == ino
    info = FileStore(tmp_path, keyring=ring).load_info(sid)
    assert info.last_accessed == NOW + 120
    assert info.revision == 1


def test_journal_limit_triggers_compaction(tmp_path: Path, ring: Keyring) -> None:
    h = _handler(tmp_path, ring, journal_limit=1500)
    sid = _call(h, "create_session", client_id="c")["session_id"]
    snap, jnl = _files(tmp_path, sid)
    inodes = set()
    for i in range(30):
        _set_var(h, sid, f"v{i}", "x" * 20)
        inodes.add(snap.stat().st_ino)
        assert jnl.stat().st_size <= 1500 + journal.HEADER_SIZE
    assert len(inodes) > 3  # compacted several times
    session = FileStore(tmp_path, keyring=ring).load(sid)
    assert len(session.state.workspaces["default"].variables) == 30
    assert session.revision == 31


def test_stale_journal_left_by_a_crashed_compaction_is_ignored(
    tmp_path: Path, ring: Keyring
) -> None:
    h = _handler(tmp_path, ring)
    sid = _call(h, "create_session", client_id="c")["session_id"]
    _set_var(h, sid, "x", 1)
    _, jnl = _files(tmp_path, sid)
    old_journal = jnl.read_bytes()
    _call(h, "restore_session", session_id=sid)  # compacts
    _set_var(h, sid, "y", 2)
    _call(h, "restore_session", session_id=sid)  # compacts again
    # a crash after the snapshot rename, before the journal was emptied
    jnl.write_bytes(old_journal)
    cold = _handler(tmp_path, ring)
    assert _variables(cold, sid) == {"x": 1, "y": 2}
    assert FileStore(tmp_path, keyring=ring).load_info(sid).revision == 3
    # and the next update starts a fresh journal over it
    _set_var(cold, sid, "z", 3)
    assert _variables(_handler(tmp_path, ring), sid) == {"x": 1, "y": 2, "z": 3}


def test_torn_append_is_ignored_then_cut_off(tmp_path: Path, ring: Keyring) -> None:
    h = _handler(tmp_path, ring)
    sid = _call(h, "create_session", client_id="c")["session_id"]
    _set_var(h, sid, "x", 1)
    _, jnl = _files(tmp_path, sid)
    good = jnl.read_bytes()
    with jnl.open("ab") as f:
        f.write(b"\x00\x00\x01\x00partial record")  # a writer died mid-append
    cold = _handler(tmp_path, ring)
    _set_var(cold, sid, "y", 2)
    data = jnl.read_bytes()
    assert data.startswith(good) and b"partial" not in data
    assert _variables(_handler(tmp_path, ring), sid) == {"x": 1, "y": 2}


def test_damaged_journal_is_reported_not_skipped(tmp_path: Path, ring: Keyring) -> None:
    h = _handler(tmp_path, ring)
    sid = _call(h, "create_session", client_id="c")["session_id"]
    _set_var(h, sid, "x", 1)
    _set_var(h, sid, "y", 2)
    _, jnl = _files(tmp_path, sid)
    data = bytearray(jnl.read_bytes())
    data[journal.HEADER_SIZE + 40] ^= 0x01
    jnl.write_bytes(bytes(data))
    reply = _handler(tmp_path, ring).handle(
        {"id": 1, "command": "restore_session", "parameters": {"session_id": sid}}
    )
    assert reply["status"] == "error"
    assert reply["error_code"] == "IntegrityError"
    # settled: the best genuine state (before the damaged record) is served from now on
    state = _call(_handler(tmp_path, ring), "restore_session", session_id=sid)
    assert state["workspace_context"]["workspaces"].get("default", {}).get("variables", {}) == {}


def test_two_stores_on_one_directory_see_each_others_appends(tmp_path: Path, ring: Keyring) -> None:
    a, b = _handler(tmp_path, ring), _handler(tmp_path, ring)
    sid = _call(a, "create_session", client_id="c")["session_id"]
    _set_var(a, sid, "x", 1)
    _set_var(b, sid, "y", 2)  # b reads a's journal, appends after it
    _set_var(a, sid, "z", 3)  # a catches up with b's record from its cache
    store_a = a.service.store
    assert store_a.load(sid).state.workspaces["default"].variables == {"x": 1, "y": 2, "z": 3}
    assert _variables(b, sid) == {"x": 1, "y": 2, "z": 3}  # b compacts
    _set_var(a, sid, "w", 4)  # a notices the new snapshot
    assert _variables(a, sid) == {"x": 1, "y": 2, "z": 3, "w": 4}


def test_compare_and_swap_through_the_journal(tmp_path: Path, ring: Keyring) -> None:
    store = FileStore(tmp_path, keyring=ring)
    session = new_session("c", now=NOW, timeout=60)
    store.create(session)
    update = StateUpdate(patches={"session_state": {"k": 1}})
    one = with_state(session, update.apply(session.state, 2), NOW)
    store.save(one, expected=session, update=update)
    with pytest.raises(ConflictError) as exc:
        store.save(one, expected=session, update=update)
    assert exc.value.details["current_revision"] == 2
    assert store.load(session.session_id).state.session_state == {"k": 1}


def test_failed_append_loses_nothing_and_the_store_recovers(
    tmp_path: Path, ring: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = _handler(tmp_path, ring)
    sid = _call(h, "create_session", client_id="c")["session_id"]
    _set_var(h, sid, "x", 1)
    real_fdatasync = os.fdatasync

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "fdatasync", failing)
    reply = h.handle(
        {
            "id": 9,
            "command": "update_session_state",
            "parameters": {
                "session_id": sid,
                "changes": {"workspaces": {"default": {"variables": {"lost": 1}}}},
            },
        }
    )
    assert reply["status"] == "error" and reply["error_code"] == "StorageError"
    monkeypatch.setattr(os, "fdatasync", real_fdatasync)
    assert _variables(_handler(tmp_path, ring), sid) == {"x": 1}
    _set_var(h, sid, "y", 2)
    assert _variables(_handler(tmp_path, ring), sid) == {"x": 1, "y": 2}


def test_cache_is_bounded(tmp_path: Path, ring: Keyring) -> None:
    store = FileStore(tmp_path, keyring=ring, cache_bytes=200_000)
    h = ProtocolHandler(
        service=SessionService(store, Policy(rate_limit=None, max_sessions_per_client=1000))
    )
    ids = [_call(h, "create_session", client_id="c")["session_id"] for _ in range(60)]
    for sid in ids:
        _set_var(h, sid, "blob", "y" * 2000)
        assert store.cache_size <= 200_000
    assert 0 < len(store._cache) < 60
    off = FileStore(tmp_path, keyring=ring, cache_bytes=0)
    assert off.load(ids[0]).state.workspaces["default"].variables["blob"] == "y" * 2000
    assert off.cache_size == 0


def test_journal_off_rewrites_snapshots(tmp_path: Path, ring: Keyring) -> None:
    h = _handler(tmp_path, ring, journal=False)
    sid = _call(h, "create_session", client_id="c")["session_id"]
    snap, jnl = _files(tmp_path, sid)
    ino = snap.stat().st_ino
    _set_var(h, sid, "x", 1)
    assert snap.stat().st_ino != ino
    assert not jnl.exists()


def test_delete_removes_the_journal(tmp_path: Path, ring: Keyring) -> None:
    store = FileStore(tmp_path, keyring=ring)
    h = ProtocolHandler(service=SessionService(store, Policy(rate_limit=None)))
    sid = _call(h, "create_session", client_id="c")["session_id"]
    _set_var(h, sid, "x", 1)
    _, jnl = _files(tmp_path, sid, ring)
    assert jnl.exists()
    assert store.delete(sid)
    assert not jnl.exists()


def test_storage_error_on_journal_read(
    tmp_path: Path, ring: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = _handler(tmp_path, ring, cache_bytes=0)
    sid = _call(h, "create_session", client_id="c")["session_id"]
    _set_var(h, sid, "x", 1)
    real_open = os.open

    def failing(path: Any, *a: Any, **kw: Any) -> int:
        if str(path).endswith(".jnl"):
            raise OSError(errno.EIO, "I/O error")
        return real_open(path, *a, **kw)

    monkeypatch.setattr(os, "open", failing)
    with pytest.raises(StorageError):
        h.service.store.load(sid)


# -- model check: journal store == memory store over random histories ------------------
_ops = st.lists(
    st.tuples(
        st.sampled_from(["set", "append", "replace", "restore", "reopen", "touch"]),
        st.integers(0, 5),
    ),
    min_size=1,
    max_size=25,
)


@pytest.mark.volume
@settings(
    max_examples=examples(full=40, quick=15),
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(ops=_ops)
def test_journal_store_matches_memory_store(tmp_path_factory: Any, ops: list[Any]) -> None:
    root = tmp_path_factory.mktemp("j")
    ring = Keyring.generate()
    clock = ManualClock(NOW)

    def file_handler() -> ProtocolHandler:
        store = FileStore(root, keyring=ring, journal_limit=600, cache_bytes=50_000)
        return ProtocolHandler(service=SessionService(store, Policy(rate_limit=None), clock=clock))

    f = file_handler()
    m = ProtocolHandler(service=SessionService(MemoryStore(), Policy(rate_limit=None), clock=clock))
    sid_f = _call(f, "create_session", client_id="c")["session_id"]
    sid_m = _call(m, "create_session", client_id="c")["session_id"]

    def both(command: str, **params: Any) -> None:
        rf = _call(f, command, session_id=sid_f, **params)
        rm = _call(m, command, session_id=sid_m, **params)
        rf.pop("session_id"), rm.pop("session_id")
        # each session has its own random history id; equal when both carry one
        assert ("lineage" in rf) == ("lineage" in rm)
        rf.pop("lineage", None), rm.pop("lineage", None)
        assert rf == rm

    for op, n in ops:
        clock.advance(7)
        if op == "set":
            both("update_session_state", changes={"workspaces": {"w": {"variables": {f"v{n}": n}}}})
        elif op == "append":
            both("update_session_state", append_history={"w": [{"source": f"{n} + 1"}]})
        elif op == "replace":
            both("update_session_state", state_data={"n": n})
        elif op == "restore":
            both("restore_session")
        elif op == "touch":
            clock.advance(61)
            both("get_session_info")
        else:
            f = file_handler()
    both("restore_session")


def test_verify_checks_journals_and_rotation_reseals_them(
    tmp_path: Path, ring: Keyring, capsys: pytest.CaptureFixture[str]
) -> None:
    from stuisession.admin import core as admin
    from stuisession.cli import app as cli

    ring.save(tmp_path / "keyring.json")
    h = _handler(tmp_path, ring)
    sid = _call(h, "create_session", client_id="c")["session_id"]
    _set_var(h, sid, "x", 1)
    _set_var(h, sid, "y", 2)
    assert cli.main(["verify", "--store", str(tmp_path)]) == 0
    store = FileStore(tmp_path)
    report = admin.rotate_keys(store, key_file=tmp_path / "keyring.json")
    assert (report.resealed, report.failed) == (1, [])
    assert store.journal_records(sid) == 0
    assert _variables(_handler(tmp_path, Keyring.load(tmp_path / "keyring.json")), sid) == {
        "x": 1,
        "y": 2,
    }
    _set_var(h2 := _handler(tmp_path, Keyring.load(tmp_path / "keyring.json")), sid, "z", 3)
    _, jnl = _files(tmp_path, sid)
    data = bytearray(jnl.read_bytes())
    data[journal.HEADER_SIZE + 40] ^= 0x01
    jnl.write_bytes(bytes(data))
    capsys.readouterr()
    assert cli.main(["verify", "--store", str(tmp_path)]) == 1
    assert "journal" in capsys.readouterr().out
    assert h2 is not None


def test_cache_charges_decoded_size_not_compressed_size(tmp_path: Path, ring: Keyring) -> None:
    """A highly compressible state is charged by what it decodes to, on every path."""
    bound = 64 * 1024 * 1024
    store = FileStore(tmp_path, keyring=ring, cache_bytes=bound)
    state_bytes = 5 * 1024 * 1024
    ids = []
    for i in range(12):
        session = new_session(f"c{i}", now=NOW, timeout=3600)
        store.create(session)
        # the 5 MB update compacts into a snapshot of a few kB, kept decoded
        update = StateUpdate(patches={"session_state": {"blob": "x" * state_bytes}})
        big = with_state(session, update.apply(session.state, 2), NOW)
        store.save(big, expected=session, update=update)
        assert len(store._cache.get(session.session_id).snapshot.blob) < state_bytes // 100
        ids.append(session.session_id)
    for sid in ids:  # and the read path
        store.load(sid)
    decoded = [h for sid in ids if (h := store._cache.get(sid)) and h.session is not None]
    # the decoded states' JSON alone is a lower bound of the memory the cache holds
    assert len(decoded) * state_bytes <= bound
    assert len(decoded) < 12
    # the bound, plus the one slot for the latest session larger than the bound
    over = [h for h in decoded if h.cost > bound]
    assert len(over) <= 1
    assert store.cache_size <= bound + sum(h.cost for h in over)
    for head in decoded:
        assert head.cost >= state_bytes

"""Directory faults under a running FileStore, seen through the ProtocolHandler.

- the store directory, or one shard directory, deleted out from under a running
  store: replies stay structured (``StorageError`` or ``SessionNotFound``), no
  traceback escapes, no wrong data is served, and the store works again once the
  directory is back;
- a read-only store directory: simulated (we run as root, so ``chmod`` stops
  nothing) by failing ``open`` for writing, ``link``, ``rename``, ``mkdir`` and
  ``unlink`` with ``EROFS`` / ``EACCES``, and, where this sandbox allows it, a
  real read-only tmpfs mount: writes fail with ``StorageError``, reads keep
  serving the last acknowledged state;
- torn, truncated and bit-flipped session files: a restore answers with an
  acknowledged state (the current one or a backup's) or ``IntegrityError``,
  never with anything else.
"""

from __future__ import annotations

import contextlib
import errno
import random
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from faultlib import (
    Call,
    FaultInjector,
    Harness,
    check_reply,
    creates_file,
    iterations,
    opens_for_writing,
    remount,
    scratch_dir,
    session_files,
    temp_files,
    tmpfs,
)

from stuisession import FileStore, ProtocolHandler, StorageError
from stuisession.keys import ENV_KEYRING
from stuisession.state import lifecycle
from stuisession.stores.file.layout import session_stem


@pytest.fixture(autouse=True)
def _no_env_keyring(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_KEYRING, raising=False)


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    with scratch_dir(tmp_path / "scratch") as d:
        yield d / "store"


def state_of(reply: dict[str, Any]) -> tuple[dict[str, Any], int]:
    result = reply["result"]
    return result.get("session_state", {}), result["revision"]


def with_history(h: Harness, updates: int = 4, client_id: str = "alice") -> tuple[str, list[Any]]:
    """A session with a few acknowledged generations; returns its id and them, oldest first."""
    sid = h.create(client_id)
    acked: list[tuple[dict[str, Any], int]] = [({}, 1)]
    for i in range(updates):
        result = h.update(sid, {f"k{i}": i, "last": i})
        acked.append((result["session_state"], result["revision"]))
    return sid, acked


def every_command(h: Harness, sid: str) -> dict[str, dict[str, Any]]:
    """Each protocol command once against *sid* (replies checked for well-formedness)."""
    return {
        "restore": h.send("restore_session", session_id=sid),
        "info": h.send("get_session_info", session_id=sid),
        "update": h.send("update_session_state", session_id=sid, state_data={"u": 1}),
        "save_context": h.send("save_context", session_id=sid, tool_id="ws-1", variables={"a": 1}),
        "close": h.send("close_session", session_id=sid),
        "create": h.send("create_session", client_id="alice"),
        "list": h.send("list_client_sessions", client_id="alice"),
        "stats": h.send("get_session_statistics"),
    }


# -- directories vanishing -----------------------------------------------------------------
def test_store_directory_deleted_under_a_running_store(root: Path) -> None:
    h = Harness(root, lock_stripes=4)
    sid, _acked = with_history(h)
    shutil.rmtree(root)
    replies = every_command(h, sid)
    for name, reply in replies.items():
        if reply["status"] == "error":
            assert reply["error_code"] in ("StorageError", "SessionNotFound"), (name, reply)
            assert str(root) not in reply["error"], reply
        else:
            # nothing of the vanished session may be served
            assert name in ("create", "list", "stats"), (name, reply)
    if replies["list"]["status"] == "success":
        assert sid not in str(replies["list"])
    with contextlib.suppress(StorageError):  # the sweep may report it too
        h.handler.cleanup_expired()
    # the directory comes back (an operator recreates it, or a restart): a new
    # store on it works, and the running one does not serve stale data
    fresh = Harness(root, lock_stripes=4, clock=h.clock)
    new_sid, acked = with_history(fresh, 2)
    reply = fresh.send("restore_session", session_id=new_sid)
    assert state_of(reply) == acked[-1]
    for handler in (h.handler, fresh.handler):
        gone = h.send("restore_session", handler, session_id=sid)
        assert gone["error_code"] in ("SessionNotFound", "StorageError"), gone
        again = h.send("restore_session", handler, session_id=new_sid)
        # the running store never saw the new key file (nor format.json, whose key
        # names the files): it may refuse or not find it, never misread
        if again["status"] == "success":
            assert state_of(again) == acked[-1]
        else:
            assert again["error_code"] in ("IntegrityError", "StorageError", "SessionNotFound"), (
                again
            )


def test_store_directory_recreated_empty(root: Path) -> None:
    """The directory is wiped and recreated empty (same key file): the running store carries on."""
    h = Harness(root, lock_stripes=4)
    sid, _ = with_history(h)
    keyring = (root / "keyring.json").read_bytes()
    shutil.rmtree(root)
    root.mkdir()
    (root / "keyring.json").write_bytes(keyring)
    (root / "keyring.json").chmod(0o600)
    replies = every_command(h, sid)
    for name in ("restore", "info", "update", "save_context", "close"):
        assert replies[name]["status"] == "error", (name, replies[name])
        assert replies[name]["error_code"] in ("SessionNotFound", "StorageError"), replies[name]
    for name in ("create", "list", "stats"):
        reply = replies[name]
        assert reply["status"] == "success" or reply["error_code"] == "StorageError", reply
    # once the layout is back (any new store instance recreates it) all works again
    FileStore(root, lock_stripes=4).close()
    new_sid, acked = with_history(h, 2)
    for handler in (h.handler, h.reopened()):
        assert state_of(h.send("restore_session", handler, session_id=new_sid)) == acked[-1]


def shard_of(root: Path, sid: str) -> Path:
    stem = session_stem(root, sid)
    (snap,) = [p for p in session_files(root, sid) if p.name == f"{stem}.snap"]
    return snap.parent


def forged_id(root: Path, shard: str) -> str:
    """A valid session id whose files go to *shard* (ids are opaque to clients).

    Files are named by a keyed hash of the id: try ids until one lands there.
    """
    for n in range(100_000):
        sid = "session_" + f"{n:08d}" + "A" * 35
        if session_stem(root, sid)[:2] == shard:
            return sid
    raise AssertionError("no id found for the shard")


def listed_ids(h: Harness, handler: ProtocolHandler, client_id: str) -> set[str]:
    reply = h.send("list_client_sessions", handler, client_id=client_id)
    assert reply["status"] == "success", reply
    return {s["session_id"] for s in reply["result"]["sessions"]}


def test_shard_directory_deleted(root: Path) -> None:
    h = Harness(root, lock_stripes=4)
    a, _ = with_history(h, client_id="alice")
    shard = shard_of(root, a)
    for n in range(50):  # a session of another client, in another shard
        b, acked_b = with_history(h, client_id=f"bob{n}")
        if shard_of(root, b) != shard:
            break
    bob = f"bob{n}"
    shutil.rmtree(shard)
    for handler in (h.handler, h.reopened()):
        if handler is h.handler:
            for name, reply in every_command(h, a).items():
                if name in ("create", "list", "stats"):
                    assert reply["status"] == "success", (name, reply)
                else:
                    assert reply["error_code"] == "SessionNotFound", (name, reply)
        assert state_of(h.send("restore_session", handler, session_id=b)) == acked_b[-1]
        assert a not in listed_ids(h, handler, "alice")
        assert b in listed_ids(h, handler, bob)
    # a new session in the deleted shard: the directory is created again
    new = lifecycle.new_session(
        "carol", now=h.clock.now(), timeout=3600, session_id=forged_id(root, shard.name)
    )
    h.store.create(new)
    assert shard.is_dir()
    result = h.update(new.session_id, {"x": 1})
    for handler in (h.handler, h.reopened()):
        reply = h.send("restore_session", handler, session_id=new.session_id)
        assert state_of(reply) == (result["session_state"], result["revision"])
        assert listed_ids(h, handler, "carol") == {new.session_id}


def test_shard_directory_deleted_while_a_write_is_in_flight(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another party removes the shard directory while an update is being written.

    The deletion wins: whatever the reply, the session is gone afterwards (no
    stale or half-written data is served) and the store carries on.
    """
    h = Harness(root, lock_stripes=4)
    sid, _acked = with_history(h)
    shard = shard_of(root, sid)
    faults = FaultInjector(root).install(monkeypatch)
    removed: list[Call] = []

    def vanish(c: Call) -> bool:
        # the first data written inside the shard: delete the shard just before
        if not removed and c.path.startswith(str(shard)):
            removed.append(c)
            shutil.rmtree(shard)
        return False

    faults.fail("write", when=vanish)
    reply = h.send("update_session_state", session_id=sid, state_data={"lost": True})
    faults.clear()
    assert removed, "the update never wrote into its shard"
    if reply["status"] == "error":
        assert reply["error_code"] in ("StorageError", "SessionNotFound"), reply
    for handler in (h.handler, h.reopened()):
        gone = h.send("restore_session", handler, session_id=sid)
        assert gone["error_code"] == "SessionNotFound", gone
    assert temp_files(root) == []
    new_sid, acked = with_history(h, 1)
    assert state_of(h.send("restore_session", h.reopened(), session_id=new_sid)) == acked[-1]


# -- read-only store directory ---------------------------------------------------------------
def read_only(c: Call) -> bool:
    """Calls a read-only file system refuses: anything that writes."""
    if c.name == "open":
        return opens_for_writing(c) or creates_file(c)
    return True


def check_read_only_behaviour(h: Harness, sid: str, acked: list[Any], code: int) -> None:
    """Writes fail with StorageError naming *code*; reads serve the last acknowledged state."""
    name = errno.errorcode[code]
    writes = {
        "update": h.send("update_session_state", session_id=sid, state_data={"ro": 1}),
        "replace": h.send(
            "update_session_state", session_id=sid, state_data={"ro": 2}, mode="replace"
        ),
        "save_context": h.send("save_context", session_id=sid, tool_id="t", variables={"a": 1}),
        "close": h.send("close_session", session_id=sid),
        "create": h.send("create_session", client_id="alice"),
        "rotate": h.send("rotate_credentials", session_id=sid),
    }
    for op, reply in writes.items():
        assert reply["status"] == "error", (op, reply)
        assert reply["error_code"] == "StorageError", (op, reply)
        assert name in reply["error"], (op, reply)
    with pytest.raises(StorageError, match=name):
        h.store.delete(sid)
    reads = {
        "restore": h.send("restore_session", session_id=sid),
        "info": h.send("get_session_info", session_id=sid),
        "list": h.send("list_client_sessions", client_id="alice"),
        "stats": h.send("get_session_statistics"),
    }
    for op, reply in reads.items():
        assert reply["status"] == "success", (op, reply)
    assert state_of(reads["restore"]) == acked[-1]
    assert reads["info"]["result"]["revision"] == acked[-1][1]
    assert [s["session_id"] for s in reads["list"]["result"]["sessions"]] == [sid]


def check_writable_again(h: Harness, sid: str) -> None:
    result = h.update(sid, {"rw": True})
    for handler in (h.handler, h.reopened()):
        reply = h.send("restore_session", handler, session_id=sid)
        assert state_of(reply) == (result["session_state"], result["revision"])
    assert temp_files(h.root) == []
    assert not h.store.quarantined()


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES], ids=errno.errorcode.get)
def test_read_only_store_directory_simulated(
    root: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    h = Harness(root, lock_stripes=4)
    sid, acked = with_history(h)
    faults = FaultInjector(root).install(monkeypatch)
    for call in ("open", "link", "rename", "mkdir", "unlink"):
        faults.fail(call, code, when=read_only)
    check_read_only_behaviour(h, sid, acked, code)
    assert faults.fired
    faults.clear()
    check_writable_again(h, sid)


def test_read_only_mount(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real read-only file system (a tmpfs remounted ``ro``) where this sandbox allows
    mounting; elsewhere the same checks run against the simulated one."""
    with tmpfs(tmp_path / "mnt") as mounted:
        if mounted is None or not remount(mounted, ro=False):
            with scratch_dir(tmp_path / "scratch") as d:
                h = Harness(d / "store", lock_stripes=4)
                sid, acked = with_history(h)
                faults = FaultInjector(h.root).install(monkeypatch)
                for call in ("open", "link", "rename", "mkdir", "unlink"):
                    faults.fail(call, errno.EROFS, when=read_only)
                check_read_only_behaviour(h, sid, acked, errno.EROFS)
                faults.clear()
                check_writable_again(h, sid)
            return
        h = Harness(mounted / "store", lock_stripes=4)
        sid, acked = with_history(h)
        assert remount(mounted, ro=True)
        try:
            check_read_only_behaviour(h, sid, acked, errno.EROFS)
        finally:
            assert remount(mounted, ro=False)
        check_writable_again(h, sid)


def test_restore_while_read_only_after_touch_granularity(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restore that would record the access (touch_granularity has passed) still
    serves the session when that write fails."""
    h = Harness(root, lock_stripes=4)
    sid, acked = with_history(h)
    faults = FaultInjector(root).install(monkeypatch)
    for call in ("open", "link", "rename", "mkdir", "unlink"):
        faults.fail(call, errno.EROFS, when=read_only)
    h.clock.advance(h.policy.touch_granularity + 1)
    reply = h.send("restore_session", session_id=sid)
    assert reply["status"] == "success", reply
    assert state_of(reply) == acked[-1]


# -- damaged session files, through the protocol ------------------------------------------------
def flip_bit(data: bytes, position: int, bit: int = 0) -> bytes:
    return data[:position] + bytes([data[position] ^ (1 << bit)]) + data[position + 1 :]


DAMAGE: dict[str, Callable[[bytes], bytes]] = {
    "empty": lambda b: b"",
    "one-byte": lambda b: b[:1],
    "header-only": lambda b: b[:16],
    "half": lambda b: b[: len(b) // 2],
    "all-but-last": lambda b: b[:-1],
    "torn-page": lambda b: b[: len(b) // 2] + b"\0" * (len(b) - len(b) // 2),
    "flip-magic": lambda b: flip_bit(b, 0),
    "flip-header": lambda b: flip_bit(b, 9, 3),
    "flip-middle": lambda b: flip_bit(b, len(b) // 2, 5),
    "flip-last": lambda b: flip_bit(b, len(b) - 1, 7),
    "appended": lambda b: b + b"\0",
    "garbage": lambda b: random.Random(len(b)).randbytes(len(b)),
}


def check_never_wrong(
    h: Harness, handler: ProtocolHandler, sid: str, acked: list[Any]
) -> tuple[dict[str, Any], int] | None:
    """Restore and get_session_info answer with an acknowledged generation or IntegrityError."""
    info = h.send("get_session_info", handler, session_id=sid)
    if info["status"] == "success":
        assert info["result"]["revision"] in [r for _, r in acked], info
    else:
        assert info["error_code"] == "IntegrityError", info
    reply = h.send("restore_session", handler, session_id=sid)
    if reply["status"] == "error":
        assert reply["error_code"] == "IntegrityError", reply
        return None
    got = state_of(reply)
    assert got in acked, f"served a state that was never acknowledged: {got}"
    return got


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_current_snapshot_through_the_protocol(root: Path, damage: str) -> None:
    h = Harness(root, lock_stripes=4)
    sid, acked = with_history(h)
    stem = session_stem(root, sid)
    snap = root / "sessions" / stem[:2] / f"{stem}.snap"
    snap.write_bytes(DAMAGE[damage](snap.read_bytes()))
    backups = [p for p in session_files(root, sid) if p.name.startswith(f"{stem}.snap.")]
    got = check_never_wrong(h, h.handler, sid, acked)
    if got is None:
        # only when there was nothing to recover from
        assert not backups, "IntegrityError although backups exist"
        return
    assert got[1] < acked[-1][1] or not backups
    # the recovered generation is what every later reader sees, and writes build on it
    assert check_never_wrong(h, h.reopened(), sid, acked) == got
    result = h.update(sid, {"after": damage})
    assert result["revision"] == got[1] + 1
    for handler in (h.handler, h.reopened()):
        assert state_of(h.send("restore_session", handler, session_id=sid)) == (
            result["session_state"],
            result["revision"],
        )


def test_every_generation_damaged_is_an_integrity_error(root: Path) -> None:
    h = Harness(root, lock_stripes=4)
    sid, acked = with_history(h)
    files = session_files(root, sid)
    assert len(files) >= 2
    for f in files:
        f.write_bytes(DAMAGE["flip-middle"](f.read_bytes()))
    before = {f: f.read_bytes() for f in files}
    for handler in (h.handler, h.reopened()):
        assert check_never_wrong(h, handler, sid, acked) is None
        calls: list[tuple[str, dict[str, Any]]] = [
            ("update_session_state", {"state_data": {"x": 1}}),
            ("close_session", {}),
            ("save_context", {"tool_id": "t"}),
        ]
        for command, params in calls:
            reply = h.send(command, handler, session_id=sid, **params)
            assert reply["error_code"] == "IntegrityError", reply
    # nothing was overwritten or rolled back
    assert {f: f.read_bytes() for f in files} == before
    # the other sessions are unaffected
    other, acked_other = with_history(h, 1)
    assert state_of(h.send("restore_session", session_id=other)) == acked_other[-1]


def test_random_bit_flips_in_any_session_file(root: Path) -> None:
    """Single bit flips anywhere in any file kept for the session (snapshot,
    backups, and whatever else the store keeps per session)."""
    h = Harness(root, lock_stripes=4)
    sid, acked = with_history(h)
    stem = session_stem(root, sid)
    shard = root / "sessions" / stem[:2]
    pristine = {p: p.read_bytes() for p in shard.iterdir() if p.is_file()}
    rnd = random.Random(2024)
    for _ in range(iterations(40)):
        # back to the pristine files, then damage one
        for p in shard.iterdir():
            if p not in pristine:
                p.unlink()
        for p, data in pristine.items():
            p.write_bytes(data)
        for q in (root / "quarantine").iterdir():
            q.unlink()
        victim = rnd.choice(sorted(p for p in pristine if p.name.startswith(stem)))
        data = pristine[victim]
        victim.write_bytes(flip_bit(data, rnd.randrange(len(data)), rnd.randrange(8)))
        handler = h.reopened()  # no instance carries anything over between rounds
        got = check_never_wrong(h, handler, sid, acked)
        if got is not None:
            assert check_never_wrong(h, h.reopened(), sid, acked) == got
        if victim.name.startswith(f"{stem}.snap."):
            # a damaged backup does not touch the current state
            assert got == acked[-1], victim.name
    assert check_reply(h.handler.handle({"id": "x", "command": "get_session_statistics"}))

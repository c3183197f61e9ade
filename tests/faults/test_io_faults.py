"""Simulated I/O failures under a FileStore, seen through the ProtocolHandler.

The generic ``os`` calls the store makes (``write``, ``fsync``, ``rename``/``replace``,
``link``, ``open`` of a new file, ``mkdir``, ``unlink``) are made to fail with
``ENOSPC`` or ``EIO`` (:mod:`faultlib`). For every operation each matching call
is failed in turn (the 1st, then the 2nd, ...) until the operation no longer
reaches a failing call. After every failure:

- the reply is a structured ``StorageError`` naming the errno, without paths or ids;
- the session reads back with exactly the last acknowledged content, through
  the same handler and through a fresh ``FileStore`` on the same directory
  (the one documented exception: a failed directory ``fsync`` after the rename
  may leave the new, complete snapshot in place: its durability is unknown);
- no temp file is left behind;

and once the fault has cleared, the same store object keeps working.
A seeded random walk mixes operations and faults and compares the store with a
model built only from acknowledged replies after every step.
"""

from __future__ import annotations

import base64
import errno
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
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
    merge_patch,
    on_directory,
    on_file,
    opens_for_reading,
    scratch_dir,
    temp_files,
    tmpfs,
)

from stuisession import Policy, ProtocolHandler, StorageError
from stuisession.keys import ENV_KEYRING


@pytest.fixture(autouse=True)
def _no_env_keyring(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_KEYRING, raising=False)


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    with scratch_dir(tmp_path / "scratch") as d:
        yield d / "store"


# -- the model of what was acknowledged ------------------------------------------------------
@dataclass(frozen=True)
class Active:
    state: dict[str, Any]
    revision: int


GONE = "gone"  # closed or deleted: not restorable, not listed
Expected = Active | str


@dataclass
class Model:
    """Session id -> what the acknowledged replies say it is."""

    sessions: dict[str, Expected] = field(default_factory=dict)
    #: session id -> its client
    clients: dict[str, str] = field(default_factory=dict)

    def active(self) -> list[str]:
        return sorted(s for s, e in self.sessions.items() if isinstance(e, Active))

    def created(self, sid: str, client: str = "alice") -> None:
        self.sessions[sid] = Active({}, 1)
        self.clients[sid] = client


def observe(h: Harness, handler: ProtocolHandler, sid: str) -> Expected:
    reply = h.send("restore_session", handler, session_id=sid)
    if reply["status"] == "success":
        result = reply["result"]
        return Active(result.get("session_state", {}), result["revision"])
    assert reply["error_code"] == "SessionNotFound", reply
    return GONE


def listed(h: Harness, handler: ProtocolHandler, client_id: str = "alice") -> set[str]:
    reply = h.send("list_client_sessions", handler, client_id=client_id)
    assert reply["status"] == "success", reply
    return {s["session_id"] for s in reply["result"]["sessions"]}


def check_model(
    h: Harness,
    model: Model,
    alternatives: dict[str, Expected] | None = None,
    *,
    new_client: str | None = None,
    reopen: bool = True,
) -> None:
    """The store (and a fresh store on the same directory) holds exactly *model*.

    *alternatives* are outcomes of a failed, unacknowledged operation that are
    acceptable too; a session found in that state is adopted into the model.
    *new_client*: a create for this client failed; it may have committed anyway.
    """
    alternatives = alternatives or {}
    handlers = [h.handler, *([h.reopened()] if reopen else [])]
    for sid in sorted((set(model.sessions) | set(alternatives)) - {"new"}):
        seen = [observe(h, handler, sid) for handler in handlers]
        assert all(s == seen[0] for s in seen), (sid, seen)
        expected = model.sessions.get(sid, GONE)
        if seen[0] != expected:
            assert sid in alternatives and seen[0] == alternatives[sid], (sid, seen[0], expected)
            model.sessions[sid] = seen[0]
    clients = set(model.clients.values()) | ({new_client} if new_client else set())
    for handler in handlers:
        for client in sorted(clients):
            ids = listed(h, handler, client)
            unknown = ids - set(model.sessions)
            # a create whose directory fsync failed may have left an unacknowledged session
            assert not unknown or client == new_client, unknown
            for sid in unknown:
                assert observe(h, handler, sid) == Active({}, 1)
                model.created(sid, client)
            mine = {s for s in model.active() if model.clients[s] == client}
            assert ids == mine, (client, ids, mine)


def check_storage_error(reply: dict[str, Any], code: int, h: Harness, sid: str | None) -> None:
    assert reply["status"] == "error", reply
    assert reply["error_code"] == "StorageError", reply
    assert errno.errorcode[code] in reply["error"], reply
    # messages never carry paths or ids (ids are bearer secrets)
    assert str(h.root) not in reply["error"] and "session_" not in reply["error"], reply
    if sid is not None:
        assert sid not in str(reply), reply


def never_absorbed(calls: list[Call]) -> bool:
    """A failed write or fsync: the data's durability is unknown, so no success may be reported."""
    return any(c.name in ("write", "fsync", "fdatasync") for c in calls)


def commits_anyway(c: Call) -> bool:
    """A failure that may come after the new snapshot was renamed into place.

    The directory fsync, and the sync of the high-water mark written after it
    (the rename is committed by then; only its durability is unknown).
    """
    if c.path.endswith(".hwm"):
        return c.name in ("fsync", "fdatasync")
    return c.name == "fsync" and c.is_dir


# -- every call of every operation, failed in turn ----------------------------------------------
FAULTS: dict[str, tuple[str, Callable[[Call], bool] | None]] = {
    "write": ("write", None),
    "fsync-file": ("fsync", on_file),
    "fsync-dir": ("fsync", on_directory),
    "rename": ("rename", None),  # os.rename and os.replace
    "link": ("link", None),
    "open-new-file": ("open", creates_file),
    "mkdir": ("mkdir", None),
    "unlink": ("unlink", None),
    "truncate": ("truncate", None),  # os.truncate and os.ftruncate (EIO only: it frees space)
}
#: (fault, errno) pairs: ENOSPC and EIO everywhere, except where ENOSPC can not happen
FAULT_CODES = [
    (fault, code)
    for fault in sorted(FAULTS)
    for code in (errno.ENOSPC, errno.EIO)
    if not (fault == "truncate" and code == errno.ENOSPC)
]
FAULT_IDS = [f"{fault}-{errno.errorcode[code]}" for fault, code in FAULT_CODES]
#: faults every durable write must meet (the test checks that they were injected):
#: a create makes a new file in a new directory (its client is new); an update
#: or close writes and syncs something (a new snapshot or a journal append)
MUST_FIRE = {
    "create": {"write", "fsync-file", "fsync-dir", "open-new-file", "mkdir"},
    "merge": {"write", "fsync-file"},
    "replace": {"write", "fsync-file"},
    "close": {"write", "fsync-file"},
    "delete": {"unlink"},
}
OPS = list(MUST_FIRE)
MAX_ATTEMPTS = 60


@dataclass
class Attempt:
    reply: dict[str, Any] | None
    error: StorageError | None
    target: str | None
    attempted: dict[str, Expected]
    #: the client of a create
    client: str | None = None


def run_op(
    h: Harness, model: Model, op: str, sid: str, n: int, client: str | None = None
) -> Attempt:
    """Run *op* once; *attempted* is what the model becomes if it commits.

    A create is for *client*, by default a new one (its first session makes the
    store create directories: a new shard, index entries).
    """
    if op == "create":
        client = client or f"client-{n}"
        reply = h.send("create_session", client_id=client)
        new = reply["result"]["session_id"] if reply["status"] == "success" else "new"
        return Attempt(reply, None, None, {new: Active({}, 1)}, client)
    current = model.sessions[sid]
    if op in ("merge", "replace"):
        assert isinstance(current, Active)
        if op == "merge":
            data: dict[str, Any] = {f"k{n}": n, "nested": {"last": n, f"n{n}": [n] * 3}}
            new_state = merge_patch(current.state, data)
        else:
            data = {"replaced": n, "text": "x" * (n * 37 % 500)}
            new_state = data
        reply = h.send("update_session_state", session_id=sid, state_data=data, mode=op)
        return Attempt(reply, None, sid, {sid: Active(new_state, current.revision + 1)})
    if op == "close":
        reply = h.send("close_session", session_id=sid)
        return Attempt(reply, None, sid, {sid: GONE})
    assert op == "delete"
    try:
        removed = h.store.delete(sid)
    except StorageError as exc:
        return Attempt(None, exc, sid, {sid: GONE})
    assert removed
    return Attempt(None, None, sid, {sid: GONE})


def acknowledge(model: Model, attempt: Attempt) -> None:
    if attempt.reply is not None:
        assert attempt.reply["status"] == "success", attempt.reply
        result = attempt.reply["result"]
        (sid, expected) = next(iter(attempt.attempted.items()))
        if attempt.client is not None:
            sid = result["session_id"]
            model.clients[sid] = attempt.client
        if isinstance(expected, Active) and "session_state" in result:
            # the reply acknowledges exactly this content
            assert result["session_state"] == expected.state
            assert result["revision"] == expected.revision
        model.sessions[sid] = expected
    else:
        assert attempt.error is None
        model.sessions.update(attempt.attempted)


#: FileStore configurations: updates appended to the journal (the default), every
#: update rewriting the snapshot, and a journal compacted at every update
STORE_MODES: dict[str, dict[str, Any]] = {
    "journal": {},
    "snapshots": {"journal": False},
    "compacting": {"journal_limit": 0},
}


def populated(root: Path, mode: str = "journal") -> tuple[Harness, Model, str]:
    # few lock stripes: opening a store (done after every step) stays cheap
    h = Harness(root, lock_timeout=10, lock_stripes=4, **STORE_MODES[mode])
    model = Model()
    sid = h.create()
    model.created(sid)
    for i in range(3):  # a few generations, so there are backups to rotate
        result = h.update(sid, {f"base{i}": i})
        model.sessions[sid] = Active(result["session_state"], result["revision"])
    return h, model, sid


#: every operation on the default store; updates and close also on the other modes
OP_MODES = [(op, "journal") for op in OPS] + [
    ("merge", "snapshots"),
    ("merge", "compacting"),
    ("replace", "snapshots"),
    ("close", "snapshots"),
]


@pytest.mark.parametrize(("fault", "code"), FAULT_CODES, ids=FAULT_IDS)
@pytest.mark.parametrize(("op", "mode"), OP_MODES, ids=[f"{o}@{m}" for o, m in OP_MODES])
def test_each_failing_call_leaves_last_acknowledged_state(
    root: Path, monkeypatch: pytest.MonkeyPatch, op: str, mode: str, fault: str, code: int
) -> None:
    h, model, sid = populated(root, mode)
    call, when = FAULTS[fault]
    faults = FaultInjector(h.root).install(monkeypatch)
    fired = 0
    for n in range(1, MAX_ATTEMPTS + 1):
        tmp_before = set(temp_files(h.root))
        rule = faults.fail(call, code, nth=n, when=when)
        attempt = run_op(h, model, op, sid, n)
        faults.clear()
        if not rule.fired:
            # the operation made fewer than n such calls: it went through untouched
            acknowledge(model, attempt)
            check_model(h, model)
            break
        fired += 1
        succeeded = (attempt.reply or {}).get("status") == "success" or (
            attempt.reply is None and attempt.error is None
        )
        if succeeded:
            # a fault the store may absorb (e.g. removing a leftover temp file)
            assert not never_absorbed(rule.fired), f"success reported after {rule.fired}"
            acknowledge(model, attempt)
        elif attempt.reply is not None:
            check_storage_error(attempt.reply, code, h, attempt.target)
        else:
            assert attempt.error is not None and errno.errorcode[code] in attempt.error.message
        alternatives = (
            attempt.attempted if (commits_anyway(rule.fired[0]) or op == "delete") else {}
        )
        check_model(
            h,
            model,
            None if succeeded else alternatives,
            new_client=None if succeeded else attempt.client,
        )
        if call != "unlink":
            assert set(temp_files(h.root)) <= tmp_before, "a temp file was left behind"
        if op in ("close", "delete") and model.sessions[sid] == GONE:
            break  # committed (acknowledged or not): nothing left to retry
    else:
        pytest.fail(f"{op} still reached a failing {fault} call after {MAX_ATTEMPTS} attempts")
    if fault in MUST_FIRE[op]:
        assert fired, f"{op} never made a {fault} call: the test injected nothing"
    # the fault has cleared: the same store object keeps working
    live = [s for s in model.active()]
    if not live:
        live = [h.create()]
        model.created(live[0])
    target = live[0]
    current = model.sessions[target]
    assert isinstance(current, Active)
    result = h.update(target, {"after": "fault"})
    assert result["session_state"] == merge_patch(current.state, {"after": "fault"})
    model.sessions[target] = Active(result["session_state"], result["revision"])
    check_model(h, model)
    assert not h.store.quarantined(), "a fault made a snapshot fail its check"


@pytest.mark.parametrize(("fault", "code"), FAULT_CODES, ids=FAULT_IDS)
@pytest.mark.parametrize("mode", ["journal", "snapshots"])
def test_persistent_fault(
    root: Path, monkeypatch: pytest.MonkeyPatch, mode: str, fault: str, code: int
) -> None:
    """Every matching call fails (the disk stays full): each write fails cleanly,
    reads keep serving the last acknowledged state meanwhile, and all is well once
    the fault clears."""
    h, model, sid = populated(root, mode)
    other = h.create()
    model.created(other)
    call, when = FAULTS[fault]
    faults = FaultInjector(h.root).install(monkeypatch)
    for n, (op, target) in enumerate(
        [("merge", sid), ("replace", sid), ("create", sid), ("close", other), ("delete", sid)]
    ):
        rule = faults.fail(call, code, when=when)
        attempt = run_op(h, model, op, target, n)
        if rule.fired and attempt.reply is not None and attempt.reply["status"] == "error":
            check_storage_error(attempt.reply, code, h, attempt.target)
        if not rule.fired or (attempt.reply or {}).get("status") == "success":
            assert not never_absorbed(rule.fired), f"success reported after {rule.fired}"
            acknowledge(model, attempt)
            alternatives = None
        else:
            if attempt.error is not None:
                assert errno.errorcode[code] in attempt.error.message
            elif fault in MUST_FIRE[op] and fault != "fsync-dir":
                assert attempt.reply is not None and attempt.reply["status"] == "error"
            late = any(commits_anyway(c) for c in rule.fired)
            alternatives = attempt.attempted if late or op == "delete" else {}
        # while the fault lasts, reads serve the last acknowledged state
        new_client = attempt.client if alternatives else None
        check_model(h, model, alternatives, new_client=new_client, reopen=False)
        faults.clear()
        check_model(h, model, alternatives, new_client=new_client)
    # the fault has cleared: the store keeps working
    if not model.active():
        model.created(h.create())
    target = model.active()[0]
    result = h.update(target, {"after": "fault"})
    model.sessions[target] = Active(result["session_state"], result["revision"])
    check_model(h, model)


# -- a random walk of operations and faults -----------------------------------------------------
CHAOS_FAULTS: list[tuple[str, Callable[[Call], bool] | None]] = [
    ("write", None),
    ("fsync", None),
    ("rename", None),
    ("link", None),
    ("open", creates_file),
    ("open", opens_for_reading),
    ("mkdir", None),
    ("unlink", None),
    ("truncate", None),
]
CHAOS_CODES = [errno.ENOSPC, errno.EIO, errno.EROFS, errno.EDQUOT]
#: a long idle timeout: the clock moves (so restores persist access times) but nothing expires
CHAOS_POLICY = Policy(rate_limit=None, max_sessions_per_client=10_000, session_timeout=10**6)


@pytest.mark.slow
@pytest.mark.parametrize(("seed", "mode"), [(1, "journal"), (2, "snapshots"), (3, "compacting")])
def test_random_operations_under_random_faults(
    root: Path, monkeypatch: pytest.MonkeyPatch, seed: int, mode: str
) -> None:
    rnd = random.Random(seed)
    h = Harness(root, policy=CHAOS_POLICY, lock_timeout=10, lock_stripes=4, **STORE_MODES[mode])
    model = Model()
    faults = FaultInjector(h.root).install(monkeypatch)
    stats = {"steps": 0, "faults": 0, "errors": 0}
    for step in range(iterations(80)):
        active = model.active()
        choices = ["create", "sweep"]
        if active:
            choices += ["merge", "merge", "replace", "close", "delete", "restore", "restore"]
        op = rnd.choice(choices)
        sid = rnd.choice(active) if active else ""
        if rnd.random() < 0.15:
            h.clock.advance(61)  # past touch_granularity: the next restore writes
        rule = None
        if rnd.random() < 0.7:
            call, when = rnd.choice(CHAOS_FAULTS)
            rule = faults.fail(
                call, rnd.choice(CHAOS_CODES), nth=rnd.choice([1, 1, 1, 2, 3]), when=when
            )
        tmp_before = set(temp_files(h.root))
        alternatives: dict[str, Expected] = {}
        new_client = None
        if op == "restore":
            reply = h.send("restore_session", session_id=sid)
            if reply["status"] == "success":
                current = model.sessions[sid]
                assert isinstance(current, Active)
                assert reply["result"]["session_state"] == current.state, "wrong data served"
                assert reply["result"]["revision"] == current.revision
            else:
                assert rule is not None and rule.fired, reply
                check_storage_error(reply, rule.code, h, sid)
        elif op == "sweep":
            try:
                h.handler.cleanup_expired()  # closed sessions go; active ones must stay
            except StorageError:
                assert rule is not None and rule.fired
        else:
            client = rnd.choice(["alice", "bob", f"client-{step}"])
            attempt = run_op(h, model, op, sid, step, client)
            ok = (attempt.reply or {}).get("status") == "success" or (
                attempt.reply is None and attempt.error is None
            )
            if ok:
                assert rule is None or not never_absorbed(rule.fired), (op, rule.fired)
                acknowledge(model, attempt)
            else:
                assert rule is not None and rule.fired, (op, attempt)
                if attempt.reply is not None:
                    check_storage_error(attempt.reply, rule.code, h, attempt.target)
                late = any(commits_anyway(c) for c in rule.fired)
                if late or op == "delete":
                    alternatives = attempt.attempted
                    new_client = attempt.client
                stats["errors"] += 1
        fired = rule is not None and bool(rule.fired)
        stats["faults"] += fired
        stats["steps"] += 1
        faults.clear()
        # after every step the store, and a fresh one on the same directory, equal the model
        check_model(h, model, alternatives, new_client=new_client)
        if not (fired and rule is not None and rule.call == "unlink"):
            assert set(temp_files(h.root)) <= tmp_before, "a temp file was left behind"
        # keep the walk small enough to check in full after every step
        while len(model.active()) > 6:
            victim = model.active()[0]
            assert h.store.delete(victim)
            model.sessions[victim] = GONE
        for old in [s for s, e in model.sessions.items() if e == GONE][:-6]:
            del model.sessions[old]  # checked gone after the step that removed it
            del model.clients[old]
    # the walk did meet faults, and the store works once they are gone
    assert stats["faults"] >= stats["steps"] // 20, stats
    assert stats["errors"] >= 1, stats
    if not model.active():
        model.created(h.create())
    sid = model.active()[0]
    result = h.update(sid, {"final": True})
    model.sessions[sid] = Active(result["session_state"], result["revision"])
    check_model(h, model)
    assert not h.store.quarantined()


# -- a real full disk, and a resent request --------------------------------------------------------
def fill(directory: Path) -> Path:
    """Write zeros into *directory* until its file system is full."""
    filler = directory / "filler"
    chunk = b"\0" * 65536
    with filler.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


def test_real_full_file_system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tmpfs that really runs out of space (root only; elsewhere simulated with ENOSPC)."""
    with tmpfs(tmp_path / "mnt", size="4m") as mounted:
        base = mounted or tmp_path
        h, model, sid = populated(base / "store")
        big = {"blob": base64.b64encode(random.Random(7).randbytes(600_000)).decode()}
        if mounted is not None:
            filler = fill(mounted)
            faults = None
        else:
            faults = FaultInjector(h.root).install(monkeypatch)
            faults.fail("write", errno.ENOSPC)
        reply = h.send("update_session_state", session_id=sid, state_data=big, mode="merge")
        check_storage_error(reply, errno.ENOSPC, h, sid)
        small = h.send("update_session_state", session_id=sid, state_data={"s": 1}, mode="merge")
        if small["status"] == "success":  # a few bytes may still fit somewhere
            model.sessions[sid] = Active(
                small["result"]["session_state"], small["result"]["revision"]
            )
        else:
            check_storage_error(small, errno.ENOSPC, h, sid)
        check_model(h, model, reopen=False)
        assert temp_files(h.root) == []
        # space comes back: the same store object carries on
        if faults is not None:
            faults.clear()
        else:
            filler.unlink()
        result = h.update(sid, big)
        model.sessions[sid] = Active(result["session_state"], result["revision"])
        check_model(h, model)
        assert not h.store.quarantined()


@pytest.mark.parametrize("mode", ["journal", "snapshots"])
def test_resent_request_after_storage_error_is_never_applied_twice(
    root: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """A client resends the very same request (same id) after a StorageError.

    Whether the resend is answered from the reply cache (the error again) or
    applied, the history is appended at most once, and an error means the
    update was not committed (except after a failed directory fsync, the
    documented "durability unknown" case).
    """
    h, model, _ = populated(root, mode)
    faults = FaultInjector(h.root).install(monkeypatch)

    def history(sid: str) -> list[Any]:
        restored = h.send("restore_session", session_id=sid)["result"]
        model.sessions[sid] = Active(restored["session_state"], restored["revision"])
        ws = restored["workspace_context"]["workspaces"].get("ws", {})
        return list(ws.get("history", []))

    for n, fault in enumerate(["fsync-file", "fsync-dir", "rename", "truncate"]):
        # a fresh session each time: its first update also creates files (a journal)
        sid = h.create()
        model.created(sid)
        request = {
            "id": f"resend-{n}",
            "command": "update_session_state",
            "parameters": {
                "session_id": sid,
                "state_data": {"resent": 1},
                "mode": "merge",
                "append_history": {"ws": [{"source": "1 + 1"}]},
            },
        }
        before = len(history(sid))
        call, when = FAULTS[fault]
        rule = faults.fail(call, errno.EIO, nth=1, when=when)
        first = check_reply(h.handler.handle(request))
        faults.clear()
        if rule.fired and first["status"] == "error":
            assert first["error_code"] == "StorageError", first
        committed = len(history(sid)) - before
        assert committed in (0, 1), "one request appended twice"
        if first["status"] == "error" and not any(commits_anyway(c) for c in rule.fired):
            assert committed == 0, f"StorageError reported, but the update committed ({fault})"
        if first["status"] == "success":
            assert not never_absorbed(rule.fired) and committed == 1, (fault, first)
        again = check_reply(h.handler.handle(request))
        if again["status"] == "error":
            assert again["error_code"] == "StorageError", again  # the reply cache's answer
        after = len(history(sid)) - before
        # never applied twice; a committed request is not applied again
        assert after == committed + (again["status"] == "success" and not committed), (fault, again)
        assert after <= 1, "one request appended twice"
    check_model(h, model)

"""The guarantees of issue 14, one test per scenario (see docs/guarantees.md).

Clock faults are in ``test_guarantees_clock.py``, the per-client limit across
processes in ``test_guarantees_limit.py``, interleavings against a reference
model in ``test_stateful_guarantees.py``.
"""

from __future__ import annotations

import sys
import threading
import unicodedata
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guarantee_stores import OpenStore, open_store_fixture  # noqa: F401 - a fixture
from stuisession import FileStore, ManualClock, MemoryStore, Policy, ProtocolHandler
from stuisession.errors import AccessDenied, ConfigurationError, SessionNotFound, ValidationError
from stuisession.ids import check_client_id
from stuisession.keys import Keyring
from stuisession.service.core import Credentials, SessionService
from stuisession.state.schema import from_wire
from stuisession.stores.base import SessionStore

CONTROL = [chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) == "Cc"]


def test_client_ids_refuse_every_control_character() -> None:
    # every Unicode Cc character, C1 ones (U+0085 NEL, U+009B CSI) included
    assert "\x85" in CONTROL and "\x9b" in CONTROL and len(CONTROL) == 65
    for ch in CONTROL:
        with pytest.raises(ValidationError):
            check_client_id(f"client{ch}x")
    check_client_id("client\xa0x")  # U+00A0 (no-break space) is not a control character


def test_client_ids_with_c1_controls_are_refused_by_create() -> None:
    handler = ProtocolHandler(service=SessionService(MemoryStore(), clock=ManualClock()))
    for ch in ("\x85", "\x9b", "\x80", "\x9f"):
        reply = handler.handle(
            {"id": 1, "command": "create_session", "parameters": {"client_id": f"a{ch}b"}}
        )
        assert reply["status"] == "error"
        assert reply["error_code"] == "ValidationError"


def test_policy_that_can_expire_an_active_session_is_refused() -> None:
    with pytest.raises(ConfigurationError):
        Policy(session_timeout=30, touch_granularity=60)
    with pytest.raises(ConfigurationError):
        Policy(session_timeout=100, touch_granularity=51)
    Policy(session_timeout=100, touch_granularity=50)


@pytest.mark.parametrize("timeout", [2, 10, 30, 61, 3600])
def test_session_used_by_restores_only_stays_alive(timeout: int) -> None:
    # `serve --timeout 30`: create, restore at t=20, restore at t=40 -> still alive;
    # generally: restores at 2/3 of the timeout apart keep a session alive forever
    clock = ManualClock()
    service = SessionService(MemoryStore(), Policy(session_timeout=timeout), clock=clock)
    handler = ProtocolHandler(service=service)
    sid = handler.handle({"id": 0, "command": "create_session", "parameters": {"client_id": "c"}})[
        "result"
    ]["session_id"]
    step = timeout * 2 / 3
    for i in range(1, 12):
        clock.advance(step)
        reply = handler.handle(
            {"id": i, "command": "restore_session", "parameters": {"session_id": sid}}
        )
        assert reply["status"] == "success", (i, reply)


def test_serve_timeout_30_restore_at_20_and_40_keeps_the_session() -> None:
    clock = ManualClock()
    service = SessionService(MemoryStore(), Policy(session_timeout=30), clock=clock)
    sid = service.create("c").session.session_id
    clock.advance(20)
    service.restore(sid)
    clock.advance(20)
    assert service.restore(sid).info.is_active(clock.now())


# -- 1. no stale write-back: a revocation is never undone -------------------------------
def _interleave_before_first(store: SessionStore, method: str, other: Any) -> list[Any]:
    """Run *other* right before the first call of ``store.<method>``, after its read."""
    real = getattr(store, method)
    ran: list[Any] = []
    started = threading.Event()

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if not started.is_set():
            started.set()  # *other* may call the same method: it passes through
            ran.append(other())
        return real(*args, **kwargs)

    setattr(store, method, wrapped)
    return ran


def _restore_with(service: SessionService, sid: str, token: str) -> bool:
    try:
        service.restore(sid, Credentials(resume_token=token))
    except (AccessDenied, SessionNotFound):
        return False
    return True


def test_stale_access_time_write_back_never_undoes_a_rotation(open_store: OpenStore) -> None:
    clock = ManualClock()
    one = SessionService(open_store(), clock=clock)
    two = SessionService(open_store(), clock=clock)  # another bridge on the same store
    created = one.create("c")
    sid, old_token = created.session.session_id, created.resume_token
    clock.advance(3 * one.policy.touch_granularity)  # the restore's access write is due
    # the restore reads the record; then the other bridge rotates; then the restore
    # writes back its access time
    rotated = _interleave_before_first(
        one.store, "save_info", lambda: two.rotate_token(sid, Credentials(resume_token=old_token))
    )
    one.restore(sid, Credentials(resume_token=old_token))
    assert rotated, "the interleaving did not happen"
    info, new_token = rotated[0]
    stored = two.store.load_info(sid)
    assert stored.token_generation == info.token_generation == 1
    assert stored.last_accessed == clock.now()  # the access was recorded, on top
    assert not _restore_with(two, sid, old_token)  # the revoked token stays dead
    assert _restore_with(two, sid, new_token)


def test_concurrent_rotations_never_issue_two_tokens_of_one_generation(
    open_store: OpenStore,
) -> None:
    clock = ManualClock()
    one = SessionService(open_store(), clock=clock)
    two = SessionService(open_store(), clock=clock)
    created = one.create("c")
    sid, token = created.session.session_id, created.resume_token
    creds = Credentials(resume_token=token)
    inner = _interleave_before_first(one.store, "save_info", lambda: two.rotate_token(sid, creds))
    try:
        outer: tuple[Any, str] | None = one.rotate_token(sid, creds)
    except SessionNotFound:
        outer = None  # the other rotation revoked the token this one was made with
    issued = [*inner, *([outer] if outer is not None else [])]
    generations = [info.token_generation for info, _ in issued]
    assert generations[0] == 1
    assert len(set(generations)) == len(generations)  # never two tokens of one generation
    newest = max(issued, key=lambda r: r[0].token_generation)
    assert two.store.load_info(sid).token_generation == newest[0].token_generation
    for info, token in issued:
        assert _restore_with(two, sid, token) is (info is newest[0])


@pytest.mark.parametrize("kind", ["memory", "file"])
def test_no_revoked_token_survives_restores_racing_rotations(kind: str, tmp_path: Path) -> None:
    # two bridges, each session restored on one while rotated on the other at once
    clock = ManualClock()
    if kind == "memory":
        shared = MemoryStore()
        stores: list[SessionStore] = [shared, shared]
    else:
        ring = Keyring.generate()
        stores = [FileStore(tmp_path / "s", keyring=ring, fsync=False) for _ in range(2)]
    one, two = (SessionService(s, clock=clock) for s in stores)
    sessions = [one.create(f"c{i}") for i in range(40)]
    clock.advance(3 * one.policy.touch_granularity)
    new_tokens: dict[str, str] = {}

    def restore_all() -> None:
        for c in sessions:
            _restore_with(one, c.session.session_id, c.resume_token)

    def rotate_all() -> None:
        for c in sessions:
            sid = c.session.session_id
            new_tokens[sid] = two.rotate_token(sid, Credentials(resume_token=c.resume_token))[1]

    threads = [threading.Thread(target=restore_all), threading.Thread(target=rotate_all)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    revived = [
        c.session.session_id
        for c in sessions
        if _restore_with(two, c.session.session_id, c.resume_token)
    ]
    assert revived == []
    assert all(_restore_with(one, sid, tok) for sid, tok in new_tokens.items())


# -- 3. a client ahead of the server, or on another history, gets the full state --------
def _ok(handler: ProtocolHandler, command: str, **params: Any) -> dict[str, Any]:
    reply = handler.handle({"id": command, "command": command, "parameters": params})
    assert reply["status"] == "success", reply
    result: dict[str, Any] = reply["result"]
    return result


def test_client_ahead_of_a_recovered_server_gets_the_full_state(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "s", keyring=Keyring.generate(), journal=False, fsync=False)
    handler = ProtocolHandler(service=SessionService(store, clock=ManualClock()))
    sid = _ok(handler, "create_session", client_id="c")["session_id"]
    for n in range(4):
        held = _ok(handler, "update_session_state", session_id=sid, state_data={"n": n})
    assert held["revision"] == 5
    # the current snapshot is damaged: the store falls back to a backup (revision 4)
    (current,) = [i.path for i in store.verify_items() if i.session_id == sid and i.generation == 0]
    assert current is not None
    Path(current).write_bytes(b"damaged")
    params = {"session_id": sid, "since_revision": 5, "lineage": held["lineage"]}
    first = handler.handle({"id": "r1", "command": "restore_session", "parameters": params})
    if first["status"] == "error":  # the read that finds the rollback reports it, once
        assert first["details"]["rolled_back"] is True
        assert first["details"]["acknowledged_revision"] == 5
    full = _ok(handler, "restore_session", **params)
    assert full["revision"] < 5
    assert full["lineage"] != held["lineage"]  # a rollback starts a new history
    assert full["delta"] is False and full["delta_reason"] == "lineage"
    assert full["session_state"] == {"n": full["revision"] - 2}
    # in sync again on the new history
    again = _ok(
        handler,
        "restore_session",
        session_id=sid,
        since_revision=full["revision"],
        lineage=full["lineage"],
    )
    assert again["delta"] is True and again["changes"] == []


def test_client_ahead_on_the_same_history_gets_the_full_state() -> None:
    handler = ProtocolHandler(service=SessionService(MemoryStore(), clock=ManualClock()))
    created = _ok(handler, "create_session", client_id="c")
    sid, lineage = created["session_id"], created["lineage"]
    ahead = _ok(handler, "restore_session", session_id=sid, since_revision=9, lineage=lineage)
    assert ahead["delta"] is False and ahead["delta_reason"] == "ahead"
    assert "session_state" in ahead
    bare = _ok(handler, "restore_session", session_id=sid, since_revision=1)
    assert bare["delta"] is False and bare["delta_reason"] == "missing_lineage"


# -- 4. deltas cover every section -------------------------------------------------------
_UPDATES = st.one_of(
    st.builds(lambda v: {"state_data": {"k": v}, "mode": "merge"}, st.integers(0, 9)),
    st.builds(
        lambda k, v: {"changes": {"workspaces": {"default": {"variables": {k: v}}}}},
        st.sampled_from("xyz"),
        st.integers(0, 9) | st.none(),
    ),
    st.builds(
        lambda src: {"append_history": {"default": [{"source": src}]}},
        st.text("ab+ ", min_size=1, max_size=5),
    ),
    st.builds(
        lambda v, p: {"state_data": {"p": p}, "mode": "merge", "client_version": v},
        st.sampled_from(["1.0", "1.1", "2.0"]),
        st.integers(0, 3),
    ),
    st.builds(lambda k: {"changes": {"preferences": {"history_limit": k}}}, st.integers(5, 50)),
)


def _model(wire: dict[str, Any]) -> Any:
    return attrs.evolve(from_wire(wire), changes=[])


def _state_part(result: dict[str, Any]) -> dict[str, Any]:
    record = {"session_id", "client_id", "created_at", "last_modified", "timeout"}
    record |= {"is_active", "revision", "lineage", "time_until_expiry", "delta", "delta_reason"}
    return {k: v for k, v in result.items() if k not in record}


@settings(max_examples=25, deadline=None)
@given(st.lists(_UPDATES, min_size=1, max_size=8), st.data())
def test_deltas_cover_every_section(updates: list[dict[str, Any]], data: Any) -> None:
    handler = ProtocolHandler(service=SessionService(MemoryStore(), clock=ManualClock()))
    sid = _ok(handler, "create_session", client_id="c", client_version="0.9")["session_id"]
    copies = [_ok(handler, "restore_session", session_id=sid)]
    for params in updates:
        _ok(handler, "update_session_state", session_id=sid, **params)
        copies.append(_ok(handler, "restore_session", session_id=sid))
    held = data.draw(st.sampled_from(copies))
    delta = _ok(
        handler,
        "restore_session",
        session_id=sid,
        since_revision=held["revision"],
        lineage=held["lineage"],
    )
    assert delta["delta"] is True, delta
    wire = _state_part(held)
    for op in delta["changes"]:
        doc = wire
        for k in op["path"][:-1]:
            doc = doc.setdefault(k, {})
        if op.get("delete"):
            doc.pop(op["path"][-1], None)
        else:
            doc[op["path"][-1]] = op["value"]
    # nothing copied across: every section, metadata included, comes from the delta
    assert _model(wire) == _model(_state_part(copies[-1]))


# -- durable dedup: a resend after a restart is not applied twice ------------------------
def test_resend_after_a_restart_is_not_applied_twice(tmp_path: Path) -> None:
    ring = Keyring.generate()
    clock = ManualClock()

    def bridge() -> ProtocolHandler:
        store = FileStore(tmp_path / "s", keyring=ring, fsync=False)
        return ProtocolHandler(service=SessionService(store, clock=clock))

    first = bridge()
    sid = _ok(first, "create_session", client_id="c")["session_id"]
    request = {
        "id": "req-7",
        "command": "update_session_state",
        "parameters": {"session_id": sid, "append_history": {"w": [{"source": "1+1"}]}},
    }
    applied = first.handle(request)
    assert applied["result"]["revision"] == 2
    restarted = bridge()  # a new process: its reply cache is empty
    resent = restarted.handle(request)
    assert resent["status"] == "success"
    assert resent["result"]["revision"] == 2
    state = _ok(restarted, "restore_session", session_id=sid)
    assert state["revision"] == 2
    assert len(state["workspace_context"]["workspaces"]["w"]["history"]) == 1
    # the same id with other content is another request
    other = dict(request, parameters={**request["parameters"], "state_data": {"x": 1}})
    assert restarted.handle(other)["result"]["revision"] == 3


# -- the guarantees page names tests that exist ------------------------------------------
def test_every_test_named_in_the_guarantees_page_exists() -> None:
    import re

    root = Path(__file__).resolve().parent.parent
    text = (root / "docs" / "guarantees.md").read_text(encoding="utf-8")
    named = 0
    for cell in re.findall(r"`([^`]*::[^`]*)`", text):
        path, _, name = cell.partition("::")
        if path.startswith("tests/"):
            source = (root / path).read_text(encoding="utf-8")
        elif path == "stuisession.testing.stores":
            source = (root / "src/stuisession/testing/stores.py").read_text(encoding="utf-8")
        else:
            continue
        for part in name.lstrip(":").split("::"):
            assert re.search(
                rf"\b(def|class) {re.escape(part)}\b|^{re.escape(part)} =", source, re.M
            ) or (part.startswith("Test") and f"{part} =" in source), f"{cell} is not defined"
        named += 1
    assert named >= 15

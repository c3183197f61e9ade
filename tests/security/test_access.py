"""Issue 5: attempts to break each promise are refused with the right error, and change nothing."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any

import pytest

from stuisession import FileStore, ManualClock, MemoryStore, Policy, ProtocolHandler
from stuisession.admin.core import rotate_keys, verify_store
from stuisession.ids import new_session_id
from stuisession.security.audit import AuditLog
from stuisession.security.audit import verify as verify_audit

SECRET = "correct horse battery staple 7f3a9c"


_ids = itertools.count()


def call(h: ProtocolHandler, command: str, **params: Any) -> dict[str, Any]:
    # every request has its own id, as upstream clients send them
    return h.handle({"id": f"r{next(_ids)}", "command": command, "parameters": params})


def ok(h: ProtocolHandler, command: str, **params: Any) -> dict[str, Any]:
    reply = call(h, command, **params)
    assert reply["status"] == "success", reply
    return reply["result"]


def denied(reply: dict[str, Any]) -> None:
    # a session the caller cannot have answers exactly like an unknown one (issue 18)
    assert reply["status"] == "error", reply
    assert reply["error_type"] == "SessionNotFound"
    assert reply["error_code"] == "SessionNotFound"
    assert reply["error"] == "Session not found"
    assert "details" not in reply  # nothing about why


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def compat(tmp_path: Path, clock: ManualClock) -> ProtocolHandler:
    store = FileStore(tmp_path / "store", fsync=False)
    audit = AuditLog(tmp_path / "audit.log", keyring=store.codec.keyring, clock=clock, fsync=False)
    return ProtocolHandler(store, Policy(rate_limit=None), clock=clock, audit=audit)


def state_of(h: ProtocolHandler, sid: str) -> Any:
    return h.store.load(sid)


def test_cross_client_access_is_denied_like_a_missing_session(compat: ProtocolHandler) -> None:
    alice = ok(compat, "create_session", client_id="alice")["session_id"]
    ok(compat, "update_session_state", session_id=alice, state_data={"secret": SECRET})
    before = state_of(compat, alice)
    missing = new_session_id()
    for command, extra in [
        ("restore_session", {}),
        ("update_session_state", {"state_data": {"x": 1}}),
        ("close_session", {}),
        ("get_session_info", {}),
        ("load_context", {"tool_id": "t"}),
        ("save_context", {"tool_id": "t"}),
        ("rotate_credentials", {}),
    ]:
        foreign = call(compat, command, session_id=alice, client_id="mallory", **extra)
        absent = call(compat, command, session_id=missing, client_id="mallory", **extra)
        denied(foreign)
        denied(absent)
        assert {k: v for k, v in foreign.items() if k not in ("timestamp", "id")} == {
            k: v for k, v in absent.items() if k not in ("timestamp", "id")
        }
    assert state_of(compat, alice) == before
    # listing names the client and needs its credential: mallory can not list
    assert call(compat, "list_client_sessions", client_id="mallory")["status"] == "error"


@pytest.mark.parametrize(
    "bad",
    [
        "../../x",
        "session_../../../../etc/passwd",
        "session_" + "A" * 42,
        "session_" + "A" * 44,
        "",
        "session_" + "é" * 43,
        "SESSION_" + "A" * 43,
        "session_" + "A" * 42 + "/",
    ],
)
def test_malformed_and_traversal_ids_never_reach_the_store(
    compat: ProtocolHandler, bad: str, tmp_path: Path
) -> None:
    before = sorted(p.name for p in (tmp_path / "store").rglob("*"))
    reply = call(compat, "restore_session", session_id=bad)
    # an id in another format is a session the caller cannot have: upstream's fallback type
    assert reply["error_type"] == "SessionNotFound"
    assert reply["error_code"] == "SessionNotFound"
    assert bad not in json.dumps(reply) or bad == ""  # the guessed value is never echoed
    assert sorted(p.name for p in (tmp_path / "store").rglob("*")) == before


def test_guessed_ids_are_not_found(compat: ProtocolHandler) -> None:
    ok(compat, "create_session", client_id="alice")
    for _ in range(20):
        assert (
            call(compat, "restore_session", session_id=new_session_id())["error_code"]
            == "SessionNotFound"
        )


def test_deny_listed_client(tmp_path: Path) -> None:
    store = MemoryStore()
    h = ProtocolHandler(store, Policy(rate_limit=None))
    sid = ok(h, "create_session", client_id="eve")["session_id"]
    h2 = ProtocolHandler(store, Policy(rate_limit=None, deny_clients={"eve"}))
    assert call(h2, "create_session", client_id="eve")["error_code"] == "SessionError"
    denied(call(h2, "restore_session", session_id=sid))
    h3 = ProtocolHandler(store, Policy(rate_limit=None, allow_clients={"alice"}))
    assert call(h3, "create_session", client_id="bob")["error_code"] == "SessionError"
    assert ok(h3, "create_session", client_id="alice")


def test_burst_over_the_rate_limit(clock: ManualClock) -> None:
    h = ProtocolHandler(MemoryStore(), Policy(rate_limit=1.0, rate_burst=5), clock=clock)
    replies = [call(h, "get_session_statistics", client_id="spammer") for _ in range(8)]
    assert [r["status"] for r in replies[:5]] == ["success"] * 5
    limited = replies[5]
    assert limited["error_code"] == "RateLimited"
    assert limited["details"]["retry_after"] > 0
    assert call(h, "get_session_statistics", client_id="polite")["status"] == "success"
    clock.advance(2.0)
    assert call(h, "get_session_statistics", client_id="spammer")["status"] == "success"


def test_restore_after_expiry(compat: ProtocolHandler, clock: ManualClock) -> None:
    sid = ok(compat, "create_session", client_id="alice")["session_id"]
    clock.advance(3601)
    reply = call(compat, "restore_session", session_id=sid)
    assert reply["error_code"] == "SessionNotFound"
    assert reply["details"]["reason"] == "expired"
    assert (
        call(compat, "update_session_state", session_id=sid, state_data={})["details"]["reason"]
        == "expired"
    )
    assert compat.cleanup_expired() == 1
    assert call(compat, "restore_session", session_id=sid)["error_code"] == "SessionNotFound"


def test_absolute_lifetime(clock: ManualClock) -> None:
    h = ProtocolHandler(MemoryStore(), Policy(rate_limit=None, absolute_lifetime=7200), clock=clock)
    sid = ok(h, "create_session", client_id="a")["session_id"]
    for _ in range(3):  # activity slides the idle timeout, not the absolute one
        clock.advance(3000)
        if call(h, "restore_session", session_id=sid)["status"] == "error":
            break
    assert call(h, "restore_session", session_id=sid)["details"]["reason"] == "expired"


def test_no_plaintext_in_stored_files(compat: ProtocolHandler, tmp_path: Path) -> None:
    sid = ok(compat, "create_session", client_id="alice")["session_id"]
    ok(
        compat,
        "update_session_state",
        session_id=sid,
        state_data={"password": SECRET},
        changes={"objects": {"o": {"class_name": "Secret", "print_string": SECRET}}},
    )
    ok(compat, "update_session_state", session_id=sid, state_data={"password": SECRET + "!"})
    files = [p for p in (tmp_path).rglob("*") if p.is_file()]
    assert any(p.suffix == ".snap" for p in files)
    for p in files:
        data = p.read_bytes()
        assert SECRET.encode() not in data, p
        assert SECRET.encode("utf-16-le") not in data, p


def test_flipped_bits_in_encrypted_snapshot_are_never_served(compat: ProtocolHandler) -> None:
    store = compat.store
    sid = ok(compat, "create_session", client_id="alice")["session_id"]
    ok(compat, "update_session_state", session_id=sid, state_data={"v": SECRET})
    blob = store._get(sid)
    assert blob is not None
    for pos in range(0, len(blob), max(1, len(blob) // 40)):
        for bit in (0, 7):
            bad = bytearray(blob)
            bad[pos] ^= 1 << bit
            with pytest.raises(Exception) as info:
                store.codec.open(bytes(bad), expected_session_id=sid).state()
            assert type(info.value).__name__ == "IntegrityError"


def test_snapshot_swapped_between_sessions(compat: ProtocolHandler, tmp_path: Path) -> None:
    a = ok(compat, "create_session", client_id="alice")["session_id"]
    b = ok(compat, "create_session", client_id="bob")["session_id"]
    ok(compat, "update_session_state", session_id=a, state_data={"who": "alice"})
    store = compat.store
    assert isinstance(store, FileStore)
    path_a, path_b = store._paths(a).current, store._paths(b).current
    Path(path_b).write_bytes(Path(path_a).read_bytes())
    reply = call(compat, "restore_session", session_id=b)
    assert reply["status"] == "error"
    assert "alice" not in json.dumps(reply)


def test_audit_log_records_and_verifies(compat: ProtocolHandler, tmp_path: Path) -> None:
    sid = ok(compat, "create_session", client_id="alice")["session_id"]
    ok(compat, "update_session_state", session_id=sid, state_data={"s": SECRET})
    call(compat, "restore_session", session_id=sid, client_id="mallory")
    ok(compat, "close_session", session_id=sid)
    # denials are written as per-interval summaries (issue 17): end the interval now
    assert compat.service.refusals is not None
    compat.service.refusals.flush()
    log_path = tmp_path / "audit.log"
    lines = [json.loads(x) for x in log_path.read_text().splitlines()]
    events = [(x["event"], x["outcome"]) for x in lines]
    assert ("create", "ok") in events and ("update", "ok") not in events  # audit_updates off
    assert ("deny", "denied") in events and ("close", "ok") in events
    raw = log_path.read_text()
    assert sid not in raw and SECRET not in raw
    assert verify_audit(log_path, compat.store.codec.keyring)
    # truncating the log is detected
    log_path.write_text("".join(raw.splitlines(keepends=True)[:-1]))
    assert not verify_audit(log_path, compat.store.codec.keyring)


class TestStrictMode:
    @pytest.fixture
    def strict(self, clock: ManualClock) -> ProtocolHandler:
        return ProtocolHandler(
            MemoryStore(), Policy(auth_mode="strict", rate_limit=None), clock=clock
        )

    def test_token_required_and_bound(self, strict: ProtocolHandler) -> None:
        a = ok(strict, "create_session", client_id="alice")
        b = ok(strict, "create_session", client_id="bob")
        denied(
            call(strict, "restore_session", session_id=a["session_id"])
        )  # id alone is not enough
        denied(
            call(
                strict,
                "restore_session",
                session_id=a["session_id"],
                resume_token=b["resume_token"],
            )
        )
        forged = a["resume_token"][:-4] + (
            "AAAA" if not a["resume_token"].endswith("AAAA") else "BBBB"
        )
        denied(call(strict, "restore_session", session_id=a["session_id"], resume_token=forged))
        denied(
            call(
                strict,
                "update_session_state",
                session_id=a["session_id"],
                state_data={},
                resume_token="v1.garbage",
            )
        )
        r = ok(
            strict, "restore_session", session_id=a["session_id"], resume_token=a["resume_token"]
        )
        assert r["session_id_rotated"] is True and r["session_id"] != a["session_id"]
        # the old id and the old token (a replay) are now useless
        denied(
            call(
                strict,
                "restore_session",
                session_id=a["session_id"],
                resume_token=a["resume_token"],
            )
        )
        denied(
            call(
                strict,
                "restore_session",
                session_id=r["session_id"],
                resume_token=a["resume_token"],
            )
        )
        assert ok(
            strict,
            "update_session_state",
            session_id=r["session_id"],
            resume_token=r["resume_token"],
            state_data={"ok": True},
        )["update_successful"]

    def test_token_rotation_revokes_older_tokens(self, strict: ProtocolHandler) -> None:
        a = ok(strict, "create_session", client_id="alice")
        sid, old = a["session_id"], a["resume_token"]
        new = ok(strict, "rotate_credentials", session_id=sid, resume_token=old)["resume_token"]
        denied(call(strict, "get_session_info", session_id=sid, resume_token=old))
        assert ok(strict, "get_session_info", session_id=sid, resume_token=new)["session_id"] == sid

    def test_listing_needs_the_client_token(self, strict: ProtocolHandler) -> None:
        a = ok(strict, "create_session", client_id="alice")
        b = ok(strict, "create_session", client_id="bob")
        assert (
            call(strict, "list_client_sessions", client_id="alice")["error_code"] == "AccessDenied"
        )
        assert (
            call(strict, "list_client_sessions", client_id="alice", client_token=b["client_token"])[
                "error_code"
            ]
            == "AccessDenied"
        )
        got = ok(strict, "list_client_sessions", client_id="alice", client_token=a["client_token"])
        assert got["session_count"] == 1


def test_key_rotation_reseals_everything(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "s", fsync=False)
    h = ProtocolHandler(store, Policy(rate_limit=None))
    ids = [ok(h, "create_session", client_id=f"c{i}")["session_id"] for i in range(5)]
    old_key = store.codec.keyring.current_id
    report = rotate_keys(store, key_file=tmp_path / "s" / "keyring.json")
    assert report.resealed == 5 and not report.failed
    assert (os.stat(tmp_path / "s" / "keyring.json").st_mode & 0o777) == 0o600
    reopened = FileStore(tmp_path / "s", fsync=False)
    assert reopened.codec.keyring.current_id != old_key
    for sid in ids:
        assert reopened.load_snapshot(sid).header.key_id == reopened.codec.keyring.current_id
    assert list(verify_store(reopened)) == []


def test_world_readable_key_file_is_refused(tmp_path: Path) -> None:
    FileStore(tmp_path / "s")
    os.chmod(tmp_path / "s" / "keyring.json", 0o644)
    from stuisession import ConfigurationError

    with pytest.raises(ConfigurationError):
        FileStore(tmp_path / "s")


def test_audit_updates_records_each_update(tmp_path: Path, clock: ManualClock) -> None:
    store = FileStore(tmp_path / "store", fsync=False)
    audit = AuditLog(tmp_path / "audit.log", keyring=store.codec.keyring, clock=clock, fsync=False)
    h = ProtocolHandler(
        store, Policy(rate_limit=None, audit_updates=True), clock=clock, audit=audit
    )
    sid = ok(h, "create_session", client_id="alice")["session_id"]
    ok(h, "update_session_state", session_id=sid, state_data={"s": SECRET})
    lines = [json.loads(x) for x in (tmp_path / "audit.log").read_text().splitlines()]
    assert [x["event"] for x in lines] == ["create", "update"]

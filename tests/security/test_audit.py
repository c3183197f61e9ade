"""The tamper-evident audit log: format, chain, verification, concurrency, secrecy."""

from __future__ import annotations

import base64
import json
import multiprocessing
import re
import stat
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stuisession.clock import ManualClock
from stuisession.errors import IntegrityError
from stuisession.ids import new_session_id
from stuisession.keys import Keyring
from stuisession.security.audit import GENESIS, AuditLog, iter_session_events, verify


@pytest.fixture
def ring() -> Keyring:
    return Keyring.generate("k1")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def log(tmp_path: Path, ring: Keyring, clock: ManualClock) -> AuditLog:
    return AuditLog(tmp_path / "audit.log", keyring=ring, clock=clock, fsync=False)


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def fill(log: AuditLog, n: int = 5) -> list[str]:
    sids = [new_session_id() for _ in range(n)]
    for i, sid in enumerate(sids):
        log.record("create", client_id=f"client-{i}", session_id=sid)
    return sids


def canonical(obj: dict[str, object]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode() + b"\n"


# -- format -------------------------------------------------------------------------------
def test_lines_have_the_documented_fields(log: AuditLog, clock: ManualClock) -> None:
    sid = new_session_id()
    assert log.record("create", client_id="alice", session_id=sid) == 1
    clock.advance(1.5)
    assert log.record("deny", client_id="bob", outcome="denied", reason="not owner") == 2
    first, second = (json.loads(line) for line in lines_of(log.path))
    assert set(first) == {
        "v",
        "seq",
        "time",
        "event",
        "client_id",
        "session",
        "outcome",
        "reason",
        "kid",
        "prev",
        "mac",
    }
    assert first["seq"] == 1 and second["seq"] == 2
    assert first["time"] == "2026-01-01T00:00:00.000Z"
    assert second["time"] == "2026-01-01T00:00:01.500Z"
    assert first["event"] == "create" and first["outcome"] == "ok" and first["reason"] is None
    assert first["client_id"] == "alice" and first["kid"] == "k1"
    assert first["session"] == log.session_ref(sid)
    assert re.fullmatch(r"[0-9a-f]{32}", first["session"])
    assert second["session"] is None and second["reason"] == "not owner"
    assert first["prev"] == GENESIS and second["prev"] == first["mac"]
    assert re.fullmatch(r"[0-9a-f]{64}", second["mac"])


def test_all_standard_events_and_extensions_are_accepted(log: AuditLog) -> None:
    for event in (
        "create",
        "restore",
        "update",
        "close",
        "deny",
        "expire",
        "rate_limit",
        "integrity_failure",
        "key_rotation",
        "gc",
        "custom_event2",
    ):
        log.record(event)
    assert log.verify().lines == 11


@pytest.mark.parametrize("event", ["", "Create", "with space", "x" * 33, "1abc", "a-b"])
def test_bad_event_names_are_refused(log: AuditLog, event: str) -> None:
    with pytest.raises(ValueError):
        log.record(event)
    assert not log.path.exists() or log.path.read_bytes() == b""


def test_bad_outcome_is_refused(log: AuditLog) -> None:
    with pytest.raises(ValueError):
        log.record("create", outcome="maybe")


def test_long_reason_and_client_id_are_truncated(log: AuditLog) -> None:
    log.record("deny", client_id="c" * 1000, reason="r" * 1000, outcome="denied")
    (obj,) = (json.loads(line) for line in lines_of(log.path))
    assert len(obj["reason"]) == 200 and len(obj["client_id"]) == 256
    assert log.verify()


def test_non_ascii_client_ids_and_reasons_round_trip(log: AuditLog) -> None:
    log.record("create", client_id='zoë \u2603 "q" \\', reason="line\nbreak")
    (obj,) = (json.loads(line) for line in lines_of(log.path))
    assert obj["client_id"] == 'zoë \u2603 "q" \\' and obj["reason"] == "line\nbreak"
    assert len(lines_of(log.path)) == 1
    assert log.verify()


def test_files_are_private(log: AuditLog) -> None:
    log.record("create")
    head = log.path.with_name(log.path.name + ".head")
    for p in (log.path, head):
        assert stat.S_IMODE(p.stat().st_mode) & 0o077 == 0
    assert not [p for p in log.path.parent.iterdir() if p.name.endswith(".tmp")]


def test_fsync_mode_works(tmp_path: Path, ring: Keyring) -> None:
    log = AuditLog(tmp_path / "sub" / "a.log", keyring=ring, fsync=True)
    log.record("create", session_id=new_session_id())
    log.record("close")
    assert verify(log.path, ring)


# -- verification: the good cases ---------------------------------------------------------
def test_empty_and_fresh_logs_verify(tmp_path: Path, ring: Keyring) -> None:
    report = verify(tmp_path / "missing.log", ring)
    assert not report and report.reason == "log file does not exist"
    (tmp_path / "empty.log").write_bytes(b"")
    # a log is created by its first line: empty and without a head, it was emptied
    report = verify(tmp_path / "empty.log", ring)
    assert not report and "emptied" in str(report.reason)
    report = verify(tmp_path / "empty.log", ring, require_head=False)
    assert report.ok and report.lines == 0 and report.last_seq == 0


def test_intact_log_verifies(log: AuditLog, ring: Keyring) -> None:
    fill(log, 20)
    report = verify(log.path, ring)
    assert report.ok and bool(report)
    assert (report.lines, report.last_seq, report.first_bad_line, report.reason) == (
        20,
        20,
        None,
        None,
    )


def test_reopening_continues_the_chain(tmp_path: Path, ring: Keyring) -> None:
    path = tmp_path / "audit.log"
    fill(AuditLog(path, keyring=ring, fsync=False), 3)
    again = AuditLog(path, keyring=ring, fsync=False)
    assert again.record("gc") == 4
    assert verify(path, ring).last_seq == 4


def test_reopening_reads_only_the_tail(tmp_path: Path, ring: Keyring) -> None:
    path = tmp_path / "audit.log"
    fill(AuditLog(path, keyring=ring, fsync=False), 3)
    # garbage at the start would fail verify, but resuming must not even read it
    data = path.read_bytes()
    lines = data.splitlines(keepends=True)
    path.write_bytes(b"x" * 20_000 + b"\n" + b"".join(lines[-1:]))
    assert AuditLog(path, keyring=ring, fsync=False).record("gc") == 4


# -- verification: tampering --------------------------------------------------------------
def test_edited_line_is_detected(log: AuditLog, ring: Keyring) -> None:
    fill(log)
    lines = lines_of(log.path)
    obj = json.loads(lines[2])
    obj["client_id"] = "mallory"
    lines[2] = canonical(obj)
    log.path.write_bytes(b"".join(lines))
    report = verify(log.path, ring)
    assert not report.ok and report.first_bad_line == 3
    assert report.reason == "mac does not verify"
    assert report.lines == 2


def test_non_canonical_edit_is_detected(log: AuditLog, ring: Keyring) -> None:
    fill(log)
    lines = lines_of(log.path)
    lines[1] = lines[1].replace(b'"event":', b'"event": ')
    log.path.write_bytes(b"".join(lines))
    report = verify(log.path, ring)
    assert report.first_bad_line == 2 and report.reason == "not in canonical form"


def test_deleted_middle_line_is_detected(log: AuditLog, ring: Keyring) -> None:
    fill(log)
    lines = lines_of(log.path)
    del lines[2]
    log.path.write_bytes(b"".join(lines))
    report = verify(log.path, ring)
    assert not report.ok and report.first_bad_line == 3
    assert "sequence number 4, expected 3" in (report.reason or "")


def test_deleted_first_line_is_detected(log: AuditLog, ring: Keyring) -> None:
    fill(log)
    log.path.write_bytes(b"".join(lines_of(log.path)[1:]))
    assert verify(log.path, ring).first_bad_line == 1


def test_reordered_lines_are_detected(log: AuditLog, ring: Keyring) -> None:
    fill(log)
    lines = lines_of(log.path)
    lines[1], lines[2] = lines[2], lines[1]
    log.path.write_bytes(b"".join(lines))
    report = verify(log.path, ring)
    assert not report.ok and report.first_bad_line == 2


def test_renumbered_line_is_detected(log: AuditLog, ring: Keyring) -> None:
    # renumbering after a deletion needs the key: the mac no longer matches
    fill(log)
    lines = lines_of(log.path)
    del lines[2]
    for i in range(2, len(lines)):
        obj = json.loads(lines[i])
        obj["seq"] = i + 1
        lines[i] = canonical(obj)
    log.path.write_bytes(b"".join(lines))
    report = verify(log.path, ring)
    assert report.first_bad_line == 3 and report.reason == "mac does not verify"


def test_truncated_tail_is_detected(log: AuditLog, ring: Keyring) -> None:
    fill(log)
    log.path.write_bytes(b"".join(lines_of(log.path)[:3]))
    report = verify(log.path, ring)
    assert not report.ok and report.first_bad_line == 4 and report.lines == 3
    assert "truncated" in (report.reason or "")


def test_truncated_to_nothing_is_detected(log: AuditLog, ring: Keyring) -> None:
    fill(log)
    log.path.write_bytes(b"")
    report = verify(log.path, ring)
    assert not report.ok and report.first_bad_line == 1


def test_truncated_mid_line_is_detected(log: AuditLog, ring: Keyring) -> None:
    fill(log)
    data = log.path.read_bytes()
    log.path.write_bytes(data[:-10])
    report = verify(log.path, ring)
    assert not report.ok and report.first_bad_line == 5 and report.torn_tail


def test_missing_head_is_detected_unless_waived(log: AuditLog, ring: Keyring) -> None:
    fill(log)
    log.path.with_name(log.path.name + ".head").unlink()
    report = verify(log.path, ring)
    assert not report.ok and report.reason == "head file is missing"
    assert verify(log.path, ring, require_head=False).ok


def test_forged_head_is_detected(log: AuditLog, ring: Keyring) -> None:
    fill(log)
    log.path.write_bytes(b"".join(lines_of(log.path)[:3]))
    head = log.path.with_name(log.path.name + ".head")
    obj = json.loads(head.read_bytes())
    obj["seq"] = 3
    head.write_bytes(canonical(obj))
    report = verify(log.path, ring)
    assert not report.ok and report.reason == "head file mac does not verify"


def test_head_from_another_log_is_detected(tmp_path: Path, ring: Keyring) -> None:
    a = AuditLog(tmp_path / "a.log", keyring=ring, fsync=False)
    b = AuditLog(tmp_path / "b.log", keyring=ring, fsync=False)
    fill(a, 3)
    fill(b, 3)
    (tmp_path / "a.log.head").write_bytes((tmp_path / "b.log.head").read_bytes())
    report = verify(a.path, ring)
    assert not report.ok and report.reason == "head file does not match the log"


def test_appended_forged_line_without_key_is_detected(log: AuditLog, ring: Keyring) -> None:
    fill(log)
    last = json.loads(lines_of(log.path)[-1])
    forged = dict(last, seq=6, prev=last["mac"], event="close", client_id="mallory")
    forged["mac"] = "ab" * 32
    with log.path.open("ab") as fh:
        fh.write(canonical(forged))
    report = verify(log.path, ring)
    assert not report.ok and report.first_bad_line == 6
    assert report.reason == "mac does not verify"
    # the writer does not chain onto it: it continues from the head, notes the
    # bad line, and verify keeps reporting the forged line
    assert log.record("create") == 6
    assert json.loads(lines_of(log.path)[-1])["event"] == "audit_gap"
    assert verify(log.path, ring).first_bad_line == 6


def test_line_sealed_with_another_keyring_is_detected(tmp_path: Path, ring: Keyring) -> None:
    path = tmp_path / "audit.log"
    fill(AuditLog(path, keyring=ring, fsync=False), 2)
    # same key id, different secret
    impostor = Keyring.generate("k1")
    other = tmp_path / "other.log"
    fill(AuditLog(other, keyring=impostor, fsync=False), 3)
    with path.open("ab") as fh:
        fh.write(lines_of(other)[2])
    report = verify(path, ring)
    assert report.first_bad_line == 3 and report.reason == "mac does not verify"


def test_wrong_key_fails_at_line_one(log: AuditLog) -> None:
    fill(log)
    report = verify(log.path, Keyring.generate("k1"))
    assert not report.ok and report.first_bad_line == 1
    assert report.reason == "mac does not verify"
    report = verify(log.path, Keyring.generate("other"))
    assert report.first_bad_line == 1
    assert report.reason == "sealed with a key that is not in the keyring"


@pytest.mark.parametrize(
    "garbage",
    [b"not json\n", b"[1,2]\n", b'{"seq":1}\n', b"\xff\xfe\n", b"x" * 20_000 + b"\n"],
)
def test_garbage_lines_are_reported(log: AuditLog, ring: Keyring, garbage: bytes) -> None:
    fill(log, 2)
    data = lines_of(log.path)
    log.path.write_bytes(data[0] + garbage + data[1])
    report = verify(log.path, ring)
    assert not report.ok and report.first_bad_line == 2


def test_bad_field_values_are_reported(log: AuditLog, ring: Keyring) -> None:
    fill(log, 1)
    good = json.loads(lines_of(log.path)[0])
    for change in (
        {"v": 2},
        {"seq": 0},
        {"seq": "1"},
        {"kid": 7},
        {"prev": "zz"},
        {"mac": "00"},
    ):
        log.path.write_bytes(canonical(dict(good, **change)))
        assert verify(log.path, ring, require_head=False).first_bad_line == 1, change


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_any_single_byte_change_is_detected(
    tmp_path: Path, ring: Keyring, data: st.DataObject
) -> None:
    path = tmp_path / "prop.log"
    if not path.exists():
        fill(AuditLog(path, keyring=ring, clock=ManualClock(), fsync=False), 4)
        (tmp_path / "orig").write_bytes(path.read_bytes())
    original = (tmp_path / "orig").read_bytes()
    pos = data.draw(st.integers(0, len(original) - 1))
    new = data.draw(st.integers(0, 255).filter(lambda b: b != original[pos]))
    path.write_bytes(original[:pos] + bytes([new]) + original[pos + 1 :])
    assert not verify(path, ring).ok


# -- writer behaviour on damaged logs -----------------------------------------------------
def test_writer_refuses_to_extend_a_truncated_log(log: AuditLog, ring: Keyring) -> None:
    fill(log)
    log.path.write_bytes(b"".join(lines_of(log.path)[:3]))
    before = log.path.read_bytes()
    with pytest.raises(IntegrityError) as info:
        log.record("create")
    assert "truncated" in str(info.value)
    assert log.path.read_bytes() == before
    # a fresh writer (another process) refuses too
    with pytest.raises(IntegrityError):
        AuditLog(log.path, keyring=ring, fsync=False).record("create")
    assert not verify(log.path, ring).ok


def test_writer_refuses_when_head_is_deleted_and_log_has_history(log: AuditLog) -> None:
    fill(log, 3)
    log.path.with_name(log.path.name + ".head").unlink()
    with pytest.raises(IntegrityError):
        log.record("create")


def test_crash_between_line_and_head_is_tolerated(log: AuditLog, ring: Keyring) -> None:
    fill(log, 3)
    head = log.path.with_name(log.path.name + ".head")
    saved = head.read_bytes()
    log.record("close")
    head.write_bytes(saved)  # as if the process died before rewriting the head
    assert verify(log.path, ring).ok
    assert AuditLog(log.path, keyring=ring, fsync=False).record("gc") == 5
    assert verify(log.path, ring).ok


def test_head_more_than_one_line_behind_is_reported(log: AuditLog, ring: Keyring) -> None:
    fill(log, 3)
    head = log.path.with_name(log.path.name + ".head")
    saved = head.read_bytes()
    log.record("close")
    log.record("close")
    head.write_bytes(saved)
    report = verify(log.path, ring)
    assert not report.ok and "stale" in (report.reason or "")


def test_first_line_without_head_is_a_crash_not_tampering(log: AuditLog, ring: Keyring) -> None:
    log.record("create")
    log.path.with_name(log.path.name + ".head").unlink()
    assert verify(log.path, ring).ok
    assert AuditLog(log.path, keyring=ring, fsync=False).record("gc") == 2


def test_torn_last_line_is_ignored_and_repaired(log: AuditLog, ring: Keyring) -> None:
    fill(log, 3)
    with log.path.open("ab") as fh:
        fh.write(b'{"client_id":"half-writ')
    report = verify(log.path, ring)
    assert report.ok and report.torn_tail and report.lines == 3
    fresh = AuditLog(log.path, keyring=ring, fsync=False)
    assert fresh.record("gc") == 4
    report = verify(log.path, ring)
    assert report.ok and not report.torn_tail and report.lines == 4


def test_torn_only_line_is_repaired(log: AuditLog, ring: Keyring) -> None:
    log.path.write_bytes(b'{"v":1,"se')
    assert log.record("create") == 1
    assert verify(log.path, ring).ok


def test_long_torn_tail_is_repaired(log: AuditLog, ring: Keyring) -> None:
    fill(log, 30)  # the file spans several read chunks
    with log.path.open("ab") as fh:
        fh.write(b"y" * 10_000)
    assert AuditLog(log.path, keyring=ring, fsync=False).record("gc") == 31
    assert verify(log.path, ring).ok


# (a complete over-long line is garbage like any other: see
# test_one_garbage_line_does_not_stop_auditing)
@pytest.mark.parametrize("tail", [b"x" * 40_000, b"z" * 5_000 + b"\n" + b"x" * 40_000])
def test_writer_refuses_an_over_long_tail(log: AuditLog, ring: Keyring, tail: bytes) -> None:
    fill(log, 2)
    with log.path.open("ab") as fh:
        fh.write(tail)
    with pytest.raises(IntegrityError):
        AuditLog(log.path, keyring=ring, fsync=False).record("gc")


@pytest.mark.parametrize(
    "head",
    [
        b"not json",
        b"[]",
        b'{"v":1}',
        b"x" * 20_000,
        b'{"kid":"k1","last":"00","mac":"00","seq":-1,"v":1}',
        b'{"kid":"nope","last":"00","mac":"00","seq":1,"v":1}',
        b'{"kid":"k1","last":"00","mac":"00","seq":1,"v":2}',
    ],
)
def test_damaged_head_is_reported(log: AuditLog, ring: Keyring, head: bytes) -> None:
    fill(log, 2)
    log.path.with_name(log.path.name + ".head").write_bytes(head)
    report = verify(log.path, ring)
    assert not report.ok and report.first_bad_line == 3 and "head" in (report.reason or "")
    with pytest.raises(IntegrityError):
        AuditLog(log.path, keyring=ring, fsync=False).record("gc")


def test_failed_head_write_is_recoverable(
    log: AuditLog, ring: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(log, 2)

    def broken(*args: object) -> None:
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr("stuisession.security.audit.os.replace", broken)
        with pytest.raises(OSError):
            log.record("create")
    assert not [p for p in log.path.parent.iterdir() if p.name.endswith(".tmp")]
    assert verify(log.path, ring).ok  # the line is there, the head one behind
    assert log.record("create") == 4
    assert verify(log.path, ring).lines == 4


# -- keys ---------------------------------------------------------------------------------
def test_key_rotation_keeps_old_lines_verifiable(log: AuditLog, ring: Keyring) -> None:
    sid = new_session_id()
    log.record("create", session_id=sid)
    old_ref = log.session_ref(sid)
    rotated = ring.rotated("k2")
    log.keyring = rotated
    log.record("key_rotation", reason="k1 -> k2")
    log.record("restore", session_id=sid)
    assert log.keyring is rotated
    assert log.session_ref(sid) != old_ref
    assert log.session_ref(sid, "k1") == old_ref
    kids = [json.loads(line)["kid"] for line in lines_of(log.path)]
    assert kids == ["k1", "k2", "k2"]
    assert verify(log.path, rotated).ok
    # a verifier without the new key fails exactly at the first new line
    report = verify(log.path, ring)
    assert report.first_bad_line == 2
    # without the old key, the old lines can not be checked
    assert verify(log.path, Keyring({"k2": b"\0" * 32}, "k2")).first_bad_line == 1
    # session lookups work across the rotation
    events = [e["event"] for e in iter_session_events(log.path, rotated, sid)]
    assert events == ["create", "restore"]


def test_session_lookup_skips_other_sessions_and_bad_lines(log: AuditLog, ring: Keyring) -> None:
    sids = fill(log, 4)
    log.record("close", session_id=sids[1])
    with log.path.open("ab") as fh:
        fh.write(b"garbage\n")
        fh.write(b"torn")
    found = list(iter_session_events(log.path, ring, sids[1]))
    assert [e["event"] for e in found] == ["create", "close"]
    assert all(e["session"] == log.session_ref(sids[1]) for e in found)
    assert list(iter_session_events(log.path, ring, new_session_id())) == []


# -- secrecy ------------------------------------------------------------------------------
def test_log_never_contains_session_ids_or_secrets(
    log: AuditLog, ring: Keyring, tmp_path: Path
) -> None:
    sids = fill(log, 10)
    log.record("deny", session_id=sids[0], outcome="denied", reason="ownership")
    blobs = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    master = base64.b64decode(json.loads(ring.to_json())["keys"]["k1"])
    needles = [s.encode() for s in sids] + [s.split("_", 1)[1].encode() for s in sids]
    for purpose in ("audit-chain", "audit-session-id", "audit-head"):
        key = ring.derive(purpose)
        needles += [key, key.hex().encode(), base64.b64encode(key)]
    needles += [master, master.hex().encode(), base64.b64encode(master)]
    for needle in needles:
        assert needle not in blobs
    assert "k1" in repr(log) or "audit.log" in repr(log)
    assert all(s not in repr(log) for s in sids)


def test_integrity_errors_do_not_echo_log_contents(log: AuditLog) -> None:
    sids = fill(log, 2)
    lines = lines_of(log.path)
    # the head says two lines; only the first is left (a truncation: fail closed)
    log.path.write_bytes(lines[0])
    with pytest.raises(IntegrityError) as info:
        log.record("create", session_id=sids[0])
    text = str(info.value) + repr(info.value.details)
    assert "client-" not in text and sids[0] not in text


# -- concurrency --------------------------------------------------------------------------
def test_concurrent_appends_from_threads_form_one_chain(log: AuditLog, ring: Keyring) -> None:
    n_threads, per_thread = 8, 25
    seqs: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(n_threads)

    def work(t: int) -> None:
        barrier.wait()
        for _ in range(per_thread):
            seq = log.record("update", client_id=f"t{t}")
            with lock:
                seqs.append(seq)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(seqs) == list(range(1, n_threads * per_thread + 1))
    report = verify(log.path, ring)
    assert report.ok and report.lines == n_threads * per_thread


def test_two_instances_in_one_process_share_the_chain(tmp_path: Path, ring: Keyring) -> None:
    path = tmp_path / "audit.log"
    a = AuditLog(path, keyring=ring, fsync=False)
    b = AuditLog(path, keyring=ring, fsync=False)
    for i in range(10):
        (a if i % 3 else b).record("update")
    assert verify(path, ring).lines == 10


def _append_from_process(
    path: str, keyring_json: str, tag: str, count: int, start: threading.Barrier | None
) -> None:
    log = AuditLog(path, keyring=Keyring.from_json(keyring_json), fsync=False)
    if start is not None:
        start.wait(timeout=60)
    for i in range(count):
        log.record("update", client_id=f"{tag}-{i}")


@pytest.mark.e2e
def test_concurrent_appends_from_processes_form_one_chain(tmp_path: Path, ring: Keyring) -> None:
    path = tmp_path / "audit.log"
    ctx = multiprocessing.get_context("spawn")
    count = 100
    start = ctx.Barrier(3)
    procs = [
        ctx.Process(
            target=_append_from_process,
            args=(str(path), ring.to_json(), f"p{i}", count, start),
        )
        for i in range(2)
    ]
    for p in procs:
        p.start()
    _append_from_process(str(path), ring.to_json(), "main", count, start)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    report = verify(path, ring)
    assert report.ok and report.lines == 3 * count
    clients = [json.loads(line)["client_id"] for line in lines_of(path)]
    assert len(set(clients)) == 3 * count
    for tag in ("p0", "p1", "main"):  # each writer's own lines stay in its order
        mine = [c for c in clients if c.startswith(tag + "-")]
        assert mine == [f"{tag}-{i}" for i in range(count)]


def test_planted_audit_log_symlink_is_never_followed(tmp_path: Path) -> None:
    # the torn-line repair truncates audit.log: through a symlink it would cut
    # a file outside the log's directory
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"precious, with no newline at the end")
    log_path = tmp_path / "audit.log"
    log_path.symlink_to(outside)
    audit = AuditLog(log_path, keyring=Keyring.generate())
    with pytest.raises(OSError):
        audit.record("create", client_id="alice")
    assert outside.read_bytes() == b"precious, with no newline at the end"


# -- faults: a full disk, an emptied log (issue 15 item 7) --------------------------------
def test_audit_log_resumes_with_a_recorded_gap_after_a_full_disk(
    log: AuditLog, ring: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno as _errno

    fill(log, 2)

    def full(*args: object) -> int:
        raise OSError(_errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr("stuisession.security.audit.os.write", full)
        for _ in range(3):
            with pytest.raises(OSError):
                log.record("update")
    # the disk has room again: the next event goes in after a gap line
    assert log.record("restore") == 4
    events = [json.loads(line) for line in lines_of(log.path)]
    assert [e["event"] for e in events][-2:] == ["audit_gap", "restore"]
    assert events[-2]["event"] == "audit_gap" and "3 event(s)" in events[-2]["reason"]
    assert verify(log.path, ring).ok


def test_audit_log_head_failures_in_a_row_do_not_stop_the_log(
    log: AuditLog, ring: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(log, 2)

    def broken(*args: object) -> None:
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr("stuisession.security.audit.os.replace", broken)
        for _ in range(2):
            with pytest.raises(OSError):
                log.record("create")
    # a fresh writer (a bridge restart) resumes too
    fresh = AuditLog(log.path, keyring=ring, fsync=False)
    fresh.record("restore")
    report = verify(log.path, ring)
    assert report.ok and report.lines == 4


def test_emptied_audit_log_without_head_fails_verify(log: AuditLog, ring: Keyring) -> None:
    fill(log, 3)
    log.path.write_bytes(b"")
    log.path.with_name(log.path.name + ".head").unlink()
    assert not verify(log.path, ring)


def test_one_garbage_line_does_not_stop_auditing(log: AuditLog, ring: Keyring) -> None:
    fill(log, 3)
    with log.path.open("ab") as fh:
        fh.write(b'{"not": "a sealed line"}\n')
    # a fresh writer (a bridge restart) keeps auditing, chained from the head
    fresh = AuditLog(log.path, keyring=ring, fsync=False)
    assert fresh.record("restore") == 4
    assert fresh.record("update") == 6  # after the audit_gap line about the garbage
    events = [json.loads(line) for line in lines_of(log.path)[4:]]
    assert [e["event"] for e in events] == ["restore", "audit_gap", "update"]
    report = verify(log.path, ring)
    assert not report and report.first_bad_line == 4  # the garbage is reported

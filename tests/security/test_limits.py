"""Bounded resources under hostile input (issue 17): parsing, replies, caps, audit, tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from stuisession import _json
from stuisession.bridge.connections import MAX_LISTED, ConnectionTracker
from stuisession.bridge.intake import admit_forwarded
from stuisession.clock import ManualClock
from stuisession.errors import InvalidRequest, MessageTooLarge, RateLimited
from stuisession.policy import Policy
from stuisession.protocol.dedup import ReplyCache, request_key
from stuisession.protocol.handler import ProtocolHandler
from stuisession.security.aggregate import RefusalAggregator
from stuisession.security.audit import AuditLog
from stuisession.service.caps import GlobalCaps
from stuisession.service.core import SessionService
from stuisession.stores._cost import decoded_cost
from stuisession.stores.file import FileStore
from stuisession.stores.memory import MemoryStore


def wire(handler: ProtocolHandler, body: bytes) -> dict[str, Any]:
    return dict(json.loads(handler.handle_wire(body)))


def create(handler: ProtocolHandler, client: str = "alice") -> str:
    reply = handler.handle(
        {"id": "c", "command": "create_session", "parameters": {"client_id": client}}
    )
    assert reply["status"] == "success", reply
    return str(reply["result"]["session_id"])


# -- parsing cost ----------------------------------------------------------------------
def test_parsing_refuses_long_integers_before_converting_them() -> None:
    h = ProtocolHandler(MemoryStore(), Policy(rate_limit=None))
    ints = ",".join(["9" * 3900] * 2000)
    body = (
        '{"id":"x","command":"create_session","parameters":{"client_id":"a","client_info":{"n":['
        + ints
        + "]}}}"
    ).encode()
    reply = wire(h, body)
    assert reply["error_code"] == "InvalidRequest"
    assert reply["details"]["limit"] == "max_int_digits"


def test_parsing_refuses_objects_with_too_many_members() -> None:
    h = ProtocolHandler(MemoryStore(), Policy(rate_limit=None, max_json_nodes=2_000_000))
    members = ",".join(f'"k{i}":1' for i in range(650_000))
    reply = wire(
        h, ('{"id":"x","command":"create_session","parameters":{' + members + "}}").encode()
    )
    assert reply["error_code"] == "InvalidRequest"
    assert reply["details"]["limit"] == "max_object_keys"


def test_parsing_refuses_too_many_values_before_parsing() -> None:
    h = ProtocolHandler(MemoryStore(), Policy(rate_limit=None))
    body = (
        '{"id":"x","command":"get_session_statistics","parameters":{"a":['
        + ",".join(["0"] * 1_100_000)
        + "]}}"
    ).encode()
    reply = wire(h, body)
    assert reply["details"]["limit"] == "max_json_nodes"


def test_parsing_refuses_deep_nesting_cleanly() -> None:
    h = ProtocolHandler(MemoryStore(), Policy(rate_limit=None))
    reply = wire(
        h, b'{"id":"x","command":"c","parameters":' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    )
    assert reply["error_code"] == "InvalidRequest"


def test_parsing_limits_accept_ordinary_messages_and_escaped_pairs() -> None:
    value = _json.loads_limited(
        b'{"a":[1,-2,2.5,"\\ud83d\\ude00"]}', _json.Limits(), refuse_surrogates=True
    )
    assert value == {"a": [1, -2, 2.5, "\U0001f600"]}
    with pytest.raises(ValueError, match="lone surrogate"):
        _json.loads_limited(b'["\\ud800"]', _json.Limits(), refuse_surrogates=True)


# -- forwarded requests ----------------------------------------------------------------
def test_forwarded_requests_meet_the_size_limit() -> None:
    service = SessionService(MemoryStore(), Policy(max_message_size=1000))
    with pytest.raises(MessageTooLarge):
        admit_forwarded(
            b'{"id":"x","command":"evaluate","parameters":{"code":"' + b"a" * 2000 + b'"}}',
            service,
            "c1",
        )


def test_forwarded_requests_meet_the_rate_limit() -> None:
    service = SessionService(
        MemoryStore(), Policy(rate_limit=1.0, rate_burst=3), clock=ManualClock()
    )
    body = b'{"id":"x","command":"evaluate","parameters":{"code":"1"}}'
    for _ in range(3):
        admit_forwarded(body, service, "conn-a")
    with pytest.raises(RateLimited) as info:
        admit_forwarded(body, service, "conn-a")
    assert info.value.request_id == "x"
    admit_forwarded(body, service, "conn-b")  # another connection has its own bucket


def test_forwarded_request_with_lone_surrogate_id_is_a_clean_invalid_request() -> None:
    service = SessionService(MemoryStore(), Policy(rate_limit=None))
    with pytest.raises(InvalidRequest, match="id"):
        admit_forwarded(b'{"id":"\\ud800","command":"evaluate"}', service, "c")


def test_forwarded_requests_meet_the_parsing_limits() -> None:
    service = SessionService(MemoryStore(), Policy(rate_limit=None))
    with pytest.raises(InvalidRequest) as info:
        admit_forwarded(
            b'{"id":"x","command":"evaluate","parameters":{"n":' + b"9" * 5000 + b"}}", service, "c"
        )
    assert info.value.details["limit"] == "max_int_digits"


# -- what the bridge holds -------------------------------------------------------------
def test_replies_over_max_reply_bytes_are_refused() -> None:
    h = ProtocolHandler(
        MemoryStore(), Policy(rate_limit=None, max_reply_bytes=4096, max_snapshot_size=10**7)
    )
    sid = create(h)
    big = {"k": "x" * 10_000}
    upd = h.handle(
        {
            "id": "u",
            "command": "update_session_state",
            "parameters": {"session_id": sid, "state_data": big},
        }
    )
    assert upd["status"] == "success"
    reply = wire(
        h,
        json.dumps(
            {"id": "r", "command": "restore_session", "parameters": {"session_id": sid}}
        ).encode(),
    )
    assert reply["status"] == "error" and reply["error_type"] == "SessionError"
    assert reply["error_code"] == "ReplyTooLarge" and reply["id"] == "r"


def test_state_limit_applies_to_decoded_size() -> None:
    # a highly compressible state: tiny as a snapshot, large decoded
    h = ProtocolHandler(
        MemoryStore(), Policy(rate_limit=None, max_state_bytes=70_000, max_snapshot_size=10**7)
    )
    sid = create(h)
    for i in range(3):
        upd = h.handle(
            {
                "id": f"u{i}",
                "command": "update_session_state",
                "parameters": {
                    "session_id": sid,
                    "state_data": {f"k{i}": "a" * 20_000},
                    "mode": "merge",
                },
            }
        )
        assert upd["status"] == "success", upd
    upd = h.handle(
        {
            "id": "u9",
            "command": "update_session_state",
            "parameters": {"session_id": sid, "state_data": {"k9": "a" * 20_000}, "mode": "merge"},
        }
    )
    assert upd["status"] == "error" and upd["error_code"] == "StateTooLarge"


def test_reply_cache_charges_the_real_reply_size() -> None:
    cache = ReplyCache(ttl=60, max_bytes=100_000)
    cache.run(
        request_key(1, "restore_session", {}),
        lambda: {"result": _json.RawJSON(b'"' + b"x" * 60_000 + b'"')},
        cost=100,
    )
    assert cache._bytes >= 60_000  # charged by the reply, not the 100-byte request
    cache.run(request_key(2, "restore_session", {}), lambda: {"result": "y" * 200_000}, cost=100)
    assert cache._bytes <= cache.max_bytes  # larger than the whole cache: not kept


def test_decoded_cost_charges_decoded_size() -> None:
    assert decoded_cost(1000, 60_000_000) > 60_000_000
    assert decoded_cost(1000) > 7 * 1000


# -- global caps -----------------------------------------------------------------------
def test_total_sessions_cap_refuses_with_session_error() -> None:
    h = ProtocolHandler(
        MemoryStore(), Policy(rate_limit=None, max_sessions_total=3, max_creates_per_second=None)
    )
    for i in range(3):
        create(h, f"c{i}")
    reply = h.handle({"id": "c", "command": "create_session", "parameters": {"client_id": "fresh"}})
    assert reply["error_type"] == "SessionError" and reply["error_code"] == "CapacityExceeded"
    assert reply["details"]["cap"] == "max_sessions_total"


def test_creates_per_second_cap_across_clients() -> None:
    now = [0.0]
    caps = GlobalCaps(MemoryStore(), Policy(max_creates_per_second=5.0), now=lambda: now[0])
    for _ in range(5):
        caps.check_create()
    with pytest.raises(Exception) as info:
        caps.check_create()
    assert getattr(info.value, "cap", None) == "max_creates_per_second"
    now[0] += 1.0
    caps.check_create()


def test_store_disk_cap(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "s", fsync=False)
    h = ProtocolHandler(
        store, Policy(rate_limit=None, max_store_bytes=1, max_creates_per_second=None)
    )
    first = h.handle({"id": "c", "command": "create_session", "parameters": {"client_id": "a"}})
    second = h.handle({"id": "d", "command": "create_session", "parameters": {"client_id": "b"}})
    refused = [r for r in (first, second) if r["status"] == "error"]
    assert refused and refused[0]["details"]["cap"] == "max_store_bytes"


# -- audit under attack ----------------------------------------------------------------
def test_refusals_are_audited_as_one_summary_per_interval(tmp_path: Path) -> None:
    store = MemoryStore()
    audit = AuditLog(tmp_path / "audit.log", keyring=store.codec.keyring, fsync=False)
    h = ProtocolHandler(
        store, Policy(rate_limit=1.0, rate_burst=1), audit=audit, clock=ManualClock()
    )
    sid = create(h)
    for i in range(500):
        h.handle({"id": f"r{i}", "command": "get_session_info", "parameters": {"session_id": sid}})
    assert h.service.refusals is not None
    h.service.refusals.close()
    lines = [json.loads(x) for x in (tmp_path / "audit.log").read_text().splitlines()]
    limited = [x for x in lines if x["event"] == "rate_limit"]
    assert len(limited) == 1 and limited[0]["reason"].endswith("x499")
    text = (tmp_path / "audit.log").read_text()
    assert sid not in text  # the session-keyed bucket is logged as a keyed hash


def test_audit_summaries_escape_control_characters(tmp_path: Path) -> None:
    store = MemoryStore()
    audit = AuditLog(tmp_path / "audit.log", keyring=store.codec.keyring, fsync=False)
    agg = RefusalAggregator(audit, 3600)
    agg.add("deny", "evil\n\x1b[31m\x85\x9b", "not the owner\r\n")
    agg.close()
    raw = (tmp_path / "audit.log").read_bytes()
    body = raw[:-1]  # one line, its newline last
    assert b"\n" not in body and b"\r" not in body and b"\x1b" not in body
    assert all(b < 0x80 for b in body)  # C1 characters (and all non-ASCII) escaped


# -- connection table ------------------------------------------------------------------
def test_connection_table_attaches_without_scanning_and_bounds_statistics() -> None:
    t = ConnectionTracker(idle_timeout=10, max_connections=1000)
    for i in range(1000):
        t.seen(f"id{i}", float(i))
    t.attach("id5", "s" * 43)
    t.seen("id6", 2000.0)
    t.attach("id6", "s" * 43)
    assert t.session_of("id6") == "s" * 43 and t.session_of("id5") is None
    assert t.attached_sessions() == 1
    t.seen("new", 2001.0)  # at the bound: the least recently seen (id0) goes
    assert len(t) == 1000 and t.token_of("id0", "x") is None
    assert len(t.snapshot(2001.0)) == MAX_LISTED
    counts = t.counts(2001.0)
    assert counts["connected_clients"] == 1000 and "identity" not in json.dumps(counts)
    gone = t.sweep(2001.0 + 5)  # everything but id6 and new is idle
    assert len(gone) == 998 and len(t) == 2 and t.attached_sessions() == 1

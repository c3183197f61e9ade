"""Fuzzing the protocol handler: whatever arrives, a well-formed reply comes back.

Bytes, text, JSON values and near-valid envelopes (real command names, parameters of
random names and types, real and fake session ids) go through ``handle`` and
``handle_wire``. No exception may escape, every reply is a JSON object with ``id``,
``status`` and ``timestamp``, and every error carries a non-empty ``error`` and a
documented ``error_type`` and no ``result``.

The examples are derandomized so the suite is reproducible; set
``STUISESSION_FUZZ=deep`` for a longer, randomized run.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from stuisession import ManualClock, MemoryStore, Policy, ProtocolHandler
from volume import examples as volume_examples

DEEP = os.environ.get("STUISESSION_FUZZ") == "deep"
pytestmark = pytest.mark.volume


def fuzz_settings(examples: int) -> settings:
    # make test draws a third (at least 30); make faults the full count; deep 20 times it
    quick = volume_examples(full=examples, quick=max(30, examples // 3))
    return settings(
        max_examples=examples * 20 if DEEP else quick,
        deadline=None,
        derandomize=not DEEP,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\Z")
#: every error_type docs/protocol.md says the handler produces
ERROR_TYPES = {
    "SessionError",
    "SessionNotFound",
    "RuntimeError",
    "InternalError",
    "InvalidRequest",
    "MessageTooLarge",
    "UnknownCommand",
    "ValidationError",
    "StateTooLarge",
    "Conflict",
    "IntegrityError",
    "StorageError",
    "AccessDenied",
    "RateLimited",
    "Busy",
    "UpstreamError",
}
#: internal failures report upstream's RuntimeError
TOLERATED_TYPES = ERROR_TYPES
COMMANDS = [
    "create_session",
    "restore_session",
    "update_session_state",
    "close_session",
    "get_session_info",
    "list_client_sessions",
    "get_session_statistics",
    "save_context",
    "load_context",
    "get_context_summary",
    "clear_context",
    "rotate_credentials",
]
PARAMETER_NAMES = [
    "session_id",
    "client_id",
    "state_data",
    "mode",
    "base_revision",
    "since_revision",
    "changes",
    "append_history",
    "workspace_context",
    "inspector_state",
    "object_registry",
    "client_version",
    "client_info",
    "config",
    "save_state",
    "resume_token",
    "client_token",
    "tool_id",
    "tool_type",
    "variables",
    "context",
    "data",
]


def check_reply(reply: Any) -> dict[str, Any]:
    """The invariants every reply satisfies."""
    assert isinstance(reply, dict), reply
    assert {"id", "status", "timestamp"} <= set(reply), reply
    assert reply["status"] in ("success", "error"), reply
    assert isinstance(reply["timestamp"], str) and TIMESTAMP.match(reply["timestamp"]), reply
    rid = reply["id"]
    assert rid is None or (isinstance(rid, (str, int)) and not isinstance(rid, bool)), reply
    if reply["status"] == "error":
        assert isinstance(reply["error"], str) and reply["error"], reply
        assert isinstance(reply["error_type"], str), reply
        assert reply["error_code"] in TOLERATED_TYPES, reply
        assert reply["error_type"] in {"SessionError", "SessionNotFound", "RuntimeError", "Error"}
        assert "result" not in reply, reply
        assert isinstance(reply.get("details", {}), dict), reply
    else:
        assert isinstance(reply["result"], dict), reply
        assert "error" not in reply and "error_type" not in reply, reply
    return reply


def check_wire(out: Any) -> dict[str, Any]:
    assert isinstance(out, bytes), out
    text = out.decode("utf-8")  # valid UTF-8
    reply = json.loads(text, parse_constant=_no_constants)  # strict JSON, no NaN
    return check_reply(reply)


def _no_constants(name: str) -> Any:
    raise AssertionError(f"reply contains {name}")


def new_handler(**policy: Any) -> ProtocolHandler:
    policy.setdefault("rate_limit", None)
    return ProtocolHandler(MemoryStore(), Policy(**policy), clock=ManualClock())


def both(handler: ProtocolHandler, message: bytes | str) -> tuple[dict[str, Any], dict[str, Any]]:
    return check_reply(handler.handle(message)), check_wire(handler.handle_wire(message))


# -- strategies ----------------------------------------------------------------------
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=16)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=16,
)
FRAGMENTS = [
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b",",
    b" ",
    b'"id"',
    b'"command"',
    b'"parameters"',
    b'"session_id"',
    b'"client_id"',
    b'"state_data"',
    b'"create_session"',
    b'"restore_session"',
    b'"update_session_state"',
    b'"get_session_statistics"',
    b'"session_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"',
    b'"x"',
    b'""',
    b"null",
    b"true",
    b"1",
    b"-0",
    b"1e999",
    b"1.5",
    b"NaN",
    b"Infinity",
    b'"\\u0000"',
    b'"\\ud800"',
    b'"\\"',
    b"\xff",
    b"\xc3",
    b"\xed\xa0\x80",
    "\u00e9".encode(),
    "\U0001f680".encode(),
]
json_ish = st.lists(st.sampled_from(FRAGMENTS), max_size=40).map(b"".join)
request_ids = (
    st.text(max_size=12)
    | st.integers()
    | st.none()
    | st.booleans()
    | st.floats(allow_nan=False)
    | st.lists(st.integers(), max_size=2)
    | st.just("x" * 300)
)


def usable_id(rid: Any) -> bool:
    return (isinstance(rid, str) and len(rid) <= 256) or (
        isinstance(rid, int) and not isinstance(rid, bool)
    )


def parameter_values(session_ids: list[str]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.sampled_from(session_ids),
        st.sampled_from(["alice", "bob", "", "../../x", "session_" + "A" * 43]),
        st.sampled_from(["merge", "replace"]),
        st.integers(min_value=-2, max_value=8),
        json_values,
        st.dictionaries(st.text(max_size=8), json_values, max_size=4),
        st.dictionaries(
            st.sampled_from(["preferences", "metadata", "session_state", "objects", "nope"]),
            st.dictionaries(st.text(max_size=6), json_values, max_size=3),
            max_size=2,
        ),
    )


def templates(session_ids: list[str]) -> dict[str, st.SearchStrategy[dict[str, Any]]]:
    """Valid parameters of every command (mutated by :func:`envelopes`)."""
    sid = st.sampled_from(session_ids)
    cid = st.sampled_from(["alice", "bob", "carol"])
    small = st.dictionaries(st.text(max_size=6), json_values, max_size=4)
    tool = st.sampled_from(["ws-1", "insp-1"])
    owner = {"client_id": cid}
    return {
        "create_session": st.fixed_dictionaries(
            {"client_id": cid},
            optional={"client_info": small, "client_version": st.text(min_size=1, max_size=8)},
        ),
        "restore_session": st.fixed_dictionaries(
            {"session_id": sid},
            optional={**owner, "since_revision": st.integers(min_value=0, max_value=6)},
        ),
        "update_session_state": st.fixed_dictionaries(
            {"session_id": sid, "state_data": small},
            optional={
                "mode": st.sampled_from(["merge", "replace"]),
                "base_revision": st.integers(min_value=1, max_value=6),
                "object_registry": st.dictionaries(
                    st.sampled_from(["obj_1", "obj_2"]), st.none() | st.text(max_size=8)
                ),
                "workspace_context": small,
                "inspector_state": small,
                "changes": st.dictionaries(
                    st.sampled_from(["preferences", "metadata", "session_state"]), small, max_size=2
                ),
            },
        ),
        "close_session": st.fixed_dictionaries(
            {"session_id": sid}, optional={**owner, "save_state": st.booleans()}
        ),
        "get_session_info": st.fixed_dictionaries({"session_id": sid}, optional=owner),
        "list_client_sessions": st.fixed_dictionaries({"client_id": cid}),
        "get_session_statistics": st.just({}),
        "save_context": st.fixed_dictionaries(
            {"session_id": sid, "tool_id": tool},
            optional={
                "variables": small,
                "context": small,
                "mode": st.sampled_from(["merge", "replace"]),
                "tool_type": st.sampled_from(["workspace", "inspector"]),
            },
        ),
        "load_context": st.fixed_dictionaries({"session_id": sid, "tool_id": tool}),
        "get_context_summary": st.fixed_dictionaries(
            {"session_id": sid}, optional={"tool_id": tool}
        ),
        "clear_context": st.fixed_dictionaries({"session_id": sid}, optional={"tool_id": tool}),
        "rotate_credentials": st.fixed_dictionaries({"session_id": sid}, optional=owner),
    }


@st.composite
def envelopes(draw: st.DrawFn, session_ids: list[str]) -> dict[str, Any]:
    """Mostly valid requests, some with parameters dropped, retyped or added."""
    # updates and restores are where the state is: ask for them more often
    command = draw(st.sampled_from([*COMMANDS, "update_session_state", "restore_session", "nope"]))
    request: dict[str, Any] = {
        "id": draw(st.text(max_size=10) | st.integers(min_value=-(2**70), max_value=2**70)),
        "command": command,
    }
    kind = draw(st.sampled_from(["valid", "valid", "mutated", "mutated", "random", "absent"]))
    if kind == "absent":
        return request
    if kind == "random":
        request["parameters"] = draw(
            json_values
            | st.dictionaries(
                st.sampled_from(PARAMETER_NAMES), parameter_values(session_ids), max_size=6
            )
        )
        return request
    strategy = templates(session_ids).get(command, st.just({}))
    params = dict(draw(strategy))
    if kind == "mutated":
        for name in draw(st.lists(st.sampled_from(sorted(params) or ["x"]), max_size=2)):
            params.pop(name, None)
        params.update(
            draw(
                st.dictionaries(
                    st.sampled_from(PARAMETER_NAMES), parameter_values(session_ids), max_size=2
                )
            )
        )
    request["parameters"] = params
    return request


# -- fuzz tests ------------------------------------------------------------------------------
@fuzz_settings(300)
@given(message=st.binary(max_size=512))
def test_arbitrary_bytes(message: bytes) -> None:
    both(new_handler(), message)


@fuzz_settings(300)
@given(message=json_ish)
def test_json_ish_bytes(message: bytes) -> None:
    both(new_handler(), message)


@fuzz_settings(250)
@given(message=st.text(max_size=256))
def test_arbitrary_text(message: str) -> None:
    both(new_handler(), message)


@fuzz_settings(150)
@given(message=st.text(st.characters(exclude_categories=()), max_size=64))
def test_text_with_lone_surrogates(message: str) -> None:
    handler = new_handler()
    check_reply(handler.handle(message))
    check_wire(handler.handle_wire(message))


@fuzz_settings(300)
@given(value=json_values, ascii_only=st.booleans())
def test_arbitrary_json_values(value: Any, ascii_only: bool) -> None:
    handler = new_handler()
    text = json.dumps(value, ensure_ascii=ascii_only)
    direct, wire = both(handler, text)
    assert direct["status"] == wire["status"] == "error"  # nothing here is a valid request
    if not isinstance(value, dict):
        assert direct["error_code"] == "InvalidRequest" and direct["id"] is None
    # the decoded value itself, as a mapping or not
    check_reply(handler.handle(value))


@fuzz_settings(300)
@given(
    rid=request_ids,
    command=st.sampled_from(COMMANDS) | st.text(max_size=8) | json_values,
    parameters=json_values,
)
def test_envelopes_with_fields_of_any_type(rid: Any, command: Any, parameters: Any) -> None:
    handler = new_handler()
    message = json.dumps({"id": rid, "command": command, "parameters": parameters})
    direct, wire = both(handler, message)
    assert direct == wire
    if usable_id(rid):
        assert direct["id"] == rid
    else:
        assert direct["id"] is None and direct["error_code"] == "InvalidRequest"


@fuzz_settings(250)
@given(data=st.data())
def test_near_valid_envelopes(data: st.DataObject) -> None:
    handler = new_handler(max_sessions_per_client=3, max_snapshot_size=16_384)
    session_ids = []
    for client_id in ("alice", "bob"):
        reply = handler.handle(
            {
                "id": "setup-" + client_id,
                "command": "create_session",
                "parameters": {"client_id": client_id},
            }
        )
        session_ids.append(reply["result"]["session_id"])
    requests = data.draw(st.lists(envelopes(session_ids), min_size=1, max_size=6))
    for n, request in enumerate(requests):
        message = json.dumps(request).encode()
        if n % 2:
            wire = check_wire(handler.handle_wire(message))
            direct = check_reply(handler.handle(message))
        else:
            direct = check_reply(handler.handle(message))
            wire = check_wire(handler.handle_wire(message))
        # the same request twice: a state-changing one is answered from the reply
        # cache, a reading one sees the same state (the clock does not move)
        assert direct == wire
        assert direct["id"] == request["id"]
        event(f"{request['command']}: {direct.get('error_type', 'success')}")
        if direct["status"] == "success":
            assert request["command"] in COMMANDS
        # and the mapping form is handled too
        check_reply(handler.handle(request))


@fuzz_settings(150)
@given(data=st.data())
def test_near_valid_envelopes_under_the_default_policy(data: st.DataObject) -> None:
    """Rate limiting and the real clock on: replies stay well-formed."""
    handler = ProtocolHandler(MemoryStore(), Policy(rate_limit=50, rate_burst=5))
    sid = handler.handle(
        {"id": "s", "command": "create_session", "parameters": {"client_id": "alice"}}
    )
    session_ids = [sid["result"]["session_id"]]
    for request in data.draw(st.lists(envelopes(session_ids), max_size=8)):
        check_reply(handler.handle(request))
        check_wire(handler.handle_wire(json.dumps(request)))


@fuzz_settings(100)
@given(message=st.binary(min_size=1, max_size=300), limit=st.integers(min_value=1, max_value=300))
def test_tiny_message_limits(message: bytes, limit: int) -> None:
    handler = new_handler(max_message_size=limit)
    direct, wire = both(handler, message)
    if len(message) > limit:
        assert direct["error_code"] == wire["error_code"] == "MessageTooLarge"

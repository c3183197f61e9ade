"""The STUI session protocol through the public API only.

Every command's result keys and types follow upstream STUI (``shared/stui-protocol.md``
§3-§4) plus the additive extensions listed in ``docs/protocol.md``; every class of bad
input gets a structured error reply with the documented ``error_type``.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stuisession import ManualClock, MemoryStore, Policy, ProtocolHandler
from stuisession.security.identity import Caller

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\Z")
START = "2026-01-01T00:00:00Z"  # ManualClock's default start
UNKNOWN_SID = "session_" + "A" * 43  # well-formed, never issued
COMMANDS = (
    "create_session",
    "restore_session",
    "update_session_state",
    "close_session",
    "get_session_info",
    "list_client_sessions",
    "get_session_statistics",
)
ERROR_KEYS = {"id", "status", "error", "error_type", "error_code", "timestamp", "details"}
UPSTREAM_TYPES = {"SessionError", "SessionNotFound", "RuntimeError", "Error"}
SUCCESS_KEYS = {"id", "status", "result", "timestamp"}

Reply = dict[str, Any]
Send = Callable[[Any], Reply]


# -- helpers --------------------------------------------------------------------------
def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_iso(value: object) -> bool:
    return isinstance(value, str) and TIMESTAMP.match(value) is not None


def assert_success(reply: Reply, rid: object) -> dict[str, Any]:
    assert reply["status"] == "success", reply
    assert set(reply) == SUCCESS_KEYS, reply
    assert reply["id"] == rid
    assert is_iso(reply["timestamp"])
    assert isinstance(reply["result"], dict)
    return reply["result"]


def assert_error(reply: Reply, error_code: str, rid: object) -> Reply:
    assert reply["status"] == "error", reply
    assert reply["error_code"] == error_code, reply
    assert reply["error_type"] in UPSTREAM_TYPES, reply
    assert reply["id"] == rid, reply
    assert "result" not in reply
    assert set(reply) <= ERROR_KEYS, reply
    assert isinstance(reply["error"], str) and reply["error"]
    assert is_iso(reply["timestamp"])
    if "details" in reply:
        assert isinstance(reply["details"], dict)
    return reply


def check_keys(result: dict[str, Any], upstream: set[str], extensions: set[str]) -> None:
    """Every upstream key is there; every other key is a documented extension."""
    keys = set(result)
    assert upstream <= keys, upstream - keys
    assert keys <= upstream | extensions, keys - upstream - extensions


class Client:
    """Sends requests through one handler, each with a fresh request id.

    Like a real client it keeps the client token each client id was given and
    presents it where it proves the client (create and list).
    """

    def __init__(
        self,
        handler: ProtocolHandler,
        clock: ManualClock,
        tokens: dict[str, str] | None = None,
    ) -> None:
        self.handler = handler
        self.clock = clock
        self._ids = itertools.count(1)
        self.tokens: dict[str, str] = {} if tokens is None else tokens

    def send(self, command: str, **params: Any) -> tuple[str, Reply]:
        rid = f"req-{next(self._ids)}"
        cid = params.get("client_id")
        if (
            command in ("create_session", "list_client_sessions")
            and isinstance(cid, str)
            and cid in self.tokens
            and "client_token" not in params
        ):
            params["client_token"] = self.tokens[cid]
        reply = self.handler.handle({"id": rid, "command": command, "parameters": params})
        if command == "create_session" and reply.get("status") == "success":
            token = reply["result"].get("client_token")
            if isinstance(cid, str) and isinstance(token, str):
                self.tokens.setdefault(cid, token)
        return rid, reply

    def ok(self, command: str, **params: Any) -> dict[str, Any]:
        rid, reply = self.send(command, **params)
        return assert_success(reply, rid)

    def err(self, command: str, error_type: str, **params: Any) -> Reply:
        rid, reply = self.send(command, **params)
        return assert_error(reply, error_type, rid)

    def create(self, client_id: str = "alice") -> str:
        return str(self.ok("create_session", client_id=client_id)["session_id"])

    def revision(self, sid: str) -> int:
        return int(self.ok("get_session_info", session_id=sid)["revision"])

    def state(self, sid: str) -> Any:
        return self.ok("restore_session", session_id=sid)["session_state"]


# -- fixtures -------------------------------------------------------------------------
@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def make_client(store: MemoryStore, clock: ManualClock) -> Callable[..., Client]:
    """A client on a new handler over the shared store and clock, with policy overrides."""

    tokens: dict[str, str] = {}

    def make(**policy: Any) -> Client:
        policy.setdefault("rate_limit", None)
        return Client(ProtocolHandler(store, Policy(**policy), clock=clock), clock, tokens)

    return make


@pytest.fixture
def client(make_client: Callable[..., Client]) -> Client:
    return make_client()


@pytest.fixture
def handler(client: Client) -> ProtocolHandler:
    return client.handler


@pytest.fixture
def sid(client: Client) -> str:
    return client.create("alice")


@pytest.fixture(params=["handle", "handle_wire"])
def send(request: pytest.FixtureRequest, handler: ProtocolHandler) -> Send:
    """Send one raw message through ``handle`` or through ``handle_wire`` (decoded)."""
    if request.param == "handle":
        return handler.handle

    def wire(message: Any) -> Reply:
        out = handler.handle_wire(message)
        assert isinstance(out, bytes)
        reply: Reply = json.loads(out.decode("utf-8"))
        return reply

    return wire


def envelope(rid: Any, command: str, **params: Any) -> bytes:
    return json.dumps({"id": rid, "command": command, "parameters": params}).encode()


# -- success: result fields per command --------------------------------------------------
def test_create_session_result(client: Client) -> None:
    r = client.ok("create_session", client_id="tui-laptop-01")
    check_keys(
        r,
        {"session_id", "client_id", "created_at", "timeout", "is_active"},
        {"revision", "resume_token", "client_token"},
    )
    assert isinstance(r["session_id"], str) and r["session_id"].startswith("session_")
    assert r["client_id"] == "tui-laptop-01"
    assert r["created_at"] == START
    assert is_int(r["timeout"]) and r["timeout"] == 3600
    assert r["is_active"] is True
    assert is_int(r["revision"]) and r["revision"] == 1


def test_create_session_ids_are_unique_and_opaque(client: Client) -> None:
    ids = {client.create(f"c{i}") for i in range(20)}
    assert len(ids) == 20
    assert all(re.fullmatch(r"session_[A-Za-z0-9_-]{43}", i) for i in ids)


def test_restore_session_result(client: Client, sid: str) -> None:
    client.ok("update_session_state", session_id=sid, state_data={"workspace": "x := 3 + 4."})
    client.clock.advance(10)
    r = client.ok("restore_session", session_id=sid)
    check_keys(
        r,
        {
            "session_id",
            "client_id",
            "created_at",
            "last_modified",
            "timeout",
            "is_active",
            "session_state",
            "workspace_context",
            "inspector_state",
            "object_registry",
        },
        {
            "revision",
            "time_until_expiry",
            "delta",
            "objects",
            "stale_objects",
            "preferences",
            "metadata",
            "contexts",
            "changes",
        },
    )
    assert r["session_id"] == sid
    assert r["client_id"] == "alice"
    assert r["created_at"] == START and is_iso(r["last_modified"])
    assert is_int(r["timeout"]) and r["is_active"] is True
    assert r["session_state"] == {"workspace": "x := 3 + 4."}
    for key in ("workspace_context", "inspector_state", "object_registry"):
        assert isinstance(r[key], dict)
    assert r["revision"] == 2
    assert r["time_until_expiry"] == 3590


def test_restore_of_a_fresh_session_has_every_upstream_key(client: Client, sid: str) -> None:
    r = client.ok("restore_session", session_id=sid)
    assert r["session_state"] == {}
    assert r["object_registry"] == {}
    assert isinstance(r["workspace_context"], dict)
    assert isinstance(r["inspector_state"], dict)


def test_update_session_state_result(client: Client, sid: str) -> None:
    client.clock.advance(5)
    r = client.ok("update_session_state", session_id=sid, state_data={"a": [1, 2]})
    check_keys(
        r, {"session_id", "last_modified", "session_state", "update_successful"}, {"revision"}
    )
    assert r["session_id"] == sid
    assert r["last_modified"] == "2026-01-01T00:00:05Z"
    assert r["session_state"] == {"a": [1, 2]}
    assert r["update_successful"] is True
    assert r["revision"] == 2


def test_close_session_result(client: Client, sid: str) -> None:
    r = client.ok("close_session", session_id=sid)
    check_keys(r, {"session_id", "closed"}, {"revision"})
    assert r == {"session_id": sid, "closed": True, "revision": 2}


def test_get_session_info_result(client: Client, sid: str) -> None:
    client.clock.advance(100)
    r = client.ok("get_session_info", session_id=sid)
    check_keys(
        r,
        {
            "session_id",
            "client_id",
            "created_at",
            "last_modified",
            "timeout",
            "is_active",
            "time_until_expiry",
            "is_expired",
        },
        {"revision", "status", "last_accessed", "expires_at"},
    )
    assert r["session_id"] == sid and r["client_id"] == "alice"
    assert r["created_at"] == r["last_modified"] == START
    assert r["timeout"] == 3600 and r["is_active"] is True and r["is_expired"] is False
    assert is_int(r["time_until_expiry"]) and r["time_until_expiry"] == 3500
    assert r["revision"] == 1 and r["status"] == "active"
    assert r["expires_at"] == "2026-01-01T01:00:00Z"


def test_list_client_sessions_result(client: Client) -> None:
    first = client.create("bob")
    client.clock.advance(1)
    second = client.create("bob")
    client.create("carol")
    r = client.ok("list_client_sessions", client_id="bob")
    check_keys(r, {"client_id", "session_count", "sessions"}, set())
    assert r["client_id"] == "bob" and r["session_count"] == 2
    assert [s["session_id"] for s in r["sessions"]] == [first, second]  # oldest first
    for item in r["sessions"]:
        check_keys(
            item,
            {
                "session_id",
                "created_at",
                "last_modified",
                "timeout",
                "is_active",
                "time_until_expiry",
            },
            {"revision"},
        )
        assert "client_id" not in item and "is_expired" not in item
        assert is_iso(item["created_at"]) and is_iso(item["last_modified"])
        assert is_int(item["timeout"]) and is_int(item["time_until_expiry"])
        assert item["is_active"] is True and is_int(item["revision"])


def test_list_client_sessions_of_a_client_without_sessions(client: Client) -> None:
    # a client that was never given a token can not prove it is "nobody"
    client.err("list_client_sessions", "AccessDenied", client_id="nobody")
    # the embedding application itself may list any client
    reply = client.handler.handle(
        {"id": "l", "command": "list_client_sessions", "parameters": {"client_id": "nobody"}},
        caller=Caller.local(),
    )
    assert reply["result"] == {"client_id": "nobody", "session_count": 0, "sessions": []}


def test_get_session_statistics_result(client: Client) -> None:
    client.create("a")
    client.create("a")
    client.create("b")
    r = client.ok("get_session_statistics")
    check_keys(
        r,
        {
            "total_sessions",
            "active_clients",
            "max_sessions_per_client",
            "default_timeout",
            "cleanup_interval",
        },
        {"active_sessions"},
    )
    assert all(is_int(v) for v in r.values())
    assert r["total_sessions"] == 3 and r["active_clients"] == 2
    assert r["max_sessions_per_client"] == 5
    assert r["default_timeout"] == 3600 and r["cleanup_interval"] == 300


def test_parameters_may_be_absent_or_null(handler: ProtocolHandler) -> None:
    for message in (
        {"id": "s1", "command": "get_session_statistics"},
        {"id": "s2", "command": "get_session_statistics", "parameters": None},
    ):
        assert_success(handler.handle(message), message["id"])


def test_integer_request_ids_are_echoed(handler: ProtocolHandler) -> None:
    reply = handler.handle({"id": 7, "command": "get_session_statistics", "parameters": {}})
    assert_success(reply, 7)


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview, str])
def test_every_message_type_is_accepted(handler: ProtocolHandler, kind: Any) -> None:
    raw = envelope("m", "create_session", client_id="x")
    message = raw.decode() if kind is str else kind(raw)
    assert_success(handler.handle(message), "m")
    assert_success(json.loads(handler.handle_wire(message)), "m")


# -- envelope errors -----------------------------------------------------------------
@pytest.mark.parametrize(
    "message",
    [
        b'{"id": "x", "command": ',
        b"",
        b"   ",
        b"{'id': 'x'}",
        b'{"id": "x", "command": "get_session_statistics"} trailing',
        b'{"id": "x",}',
    ],
    ids=["truncated", "empty", "blank", "single-quotes", "trailing-garbage", "trailing-comma"],
)
def test_invalid_json(send: Send, message: bytes) -> None:
    assert_error(send(message), "InvalidRequest", None)


@pytest.mark.parametrize("message", [b"[1, 2]", b'"a string"', b"42", b"null", b"true", b"[]"])
def test_non_object_json(send: Send, message: bytes) -> None:
    assert_error(send(message), "InvalidRequest", None)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_literals(send: Send, literal: str) -> None:
    message = '{"id": "n", "command": "create_session", "parameters": {"client_id": %s}}'
    assert_error(send((message % literal).encode()), "InvalidRequest", None)


def test_invalid_utf8(send: Send) -> None:
    assert_error(
        send(b'{"id": "x\xff", "command": "get_session_statistics"}'), "InvalidRequest", None
    )
    assert_error(send(b"\xc3\x28"), "InvalidRequest", None)
    # CESU-8 (an encoded surrogate) is not UTF-8 either
    assert_error(send(b'{"id": "\xed\xa0\x80", "command": "x"}'), "InvalidRequest", None)


@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_deeply_nested_json(send: Send, depth: int) -> None:
    nested = b"[" * depth + b"]" * depth
    message = b'{"id": "d", "command": "get_session_statistics", "parameters": {"x": ' + nested
    assert_error(send(message + b"}}"), "InvalidRequest", None)


def test_deeply_nested_state_is_a_validation_error(send: Send, sid: str) -> None:
    nested = "[" * 300 + "]" * 300
    message = (
        '{"id": "d", "command": "update_session_state", "parameters": '
        f'{{"session_id": "{sid}", "state_data": {{"x": {nested}}}}}}}'
    )
    reply = assert_error(send(message.encode()), "ValidationError", "d")
    assert reply["details"]["field"] == "state_data"


def test_missing_id(send: Send) -> None:
    assert_error(send(b'{"command": "get_session_statistics"}'), "InvalidRequest", None)
    assert_error(send(b'{"id": null, "command": "get_session_statistics"}'), "InvalidRequest", None)


@pytest.mark.parametrize("rid", ["[]", "{}", "1.5", "true", '"' + "x" * 257 + '"'])
def test_unusable_id(send: Send, rid: str) -> None:
    message = '{"id": ' + rid + ', "command": "get_session_statistics"}'
    assert_error(send(message.encode()), "InvalidRequest", None)


def test_missing_command(send: Send) -> None:
    reply = assert_error(send(b'{"id": "q", "parameters": {}}'), "InvalidRequest", "q")
    assert reply["details"]["field"] == "command"
    assert_error(send(b'{"id": "q", "command": null}'), "InvalidRequest", "q")


@pytest.mark.parametrize("command", ["1", "[]", "{}", "true", '["create_session"]'])
def test_non_string_command(send: Send, command: str) -> None:
    message = '{"id": "q", "command": ' + command + ', "parameters": {}}'
    assert_error(send(message.encode()), "InvalidRequest", "q")


@pytest.mark.parametrize("params", ["[]", '"x"', "1", "true", '[{"client_id": "a"}]'])
def test_non_object_parameters(send: Send, params: str) -> None:
    message = '{"id": "p", "command": "create_session", "parameters": ' + params + "}"
    reply = assert_error(send(message.encode()), "InvalidRequest", "p")
    assert reply["details"]["field"] == "parameters"


@pytest.mark.parametrize(
    "command", ["frobnicate", "", "CREATE_SESSION", "create_session ", "x" * 5000]
)
def test_unknown_command(send: Send, command: str) -> None:
    reply = assert_error(send(envelope("u", command)), "UnknownCommand", "u")
    assert len(reply["error"]) < 200  # the command is not echoed at length


def test_oversized_message(make_client: Callable[..., Client]) -> None:
    handler = make_client(max_message_size=256).handler
    big = envelope("big", "create_session", client_id="x" * 250)
    assert len(big) > 256
    for message in (big, big.decode(), bytearray(big)):
        assert_error(handler.handle(message), "MessageTooLarge", None)
        assert_error(json.loads(handler.handle_wire(message)), "MessageTooLarge", None)
    # multi-byte characters count as bytes, not characters
    wide = envelope("w", "create_session", client_id="é" * 120).decode().replace("\\u00e9", "é")
    assert len(wide) < 256 < len(wide.encode())
    assert_error(handler.handle(wide), "MessageTooLarge", None)
    # at the limit is fine
    exact = envelope("e", "create_session", client_id="x")
    exact = exact[:-2] + b" " * (256 - len(exact)) + exact[-2:]
    assert len(exact) == 256
    assert_success(handler.handle(exact), "e")


def test_message_of_an_unsupported_type(handler: ProtocolHandler) -> None:
    for message in (None, 42, 1.5, ["x"]):
        assert_error(handler.handle(message), "InvalidRequest", None)  # type: ignore[arg-type]


# -- parameter errors ----------------------------------------------------------------
REQUIRED = [
    ("create_session", "client_id"),
    ("restore_session", "session_id"),
    ("update_session_state", "session_id"),
    ("update_session_state", "state_data"),
    ("close_session", "session_id"),
    ("get_session_info", "session_id"),
    ("list_client_sessions", "client_id"),
]


def valid_params(command: str, sid: str) -> dict[str, Any]:
    return {
        "create_session": {"client_id": "alice"},
        "restore_session": {"session_id": sid},
        "update_session_state": {"session_id": sid, "state_data": {"k": 1}},
        "close_session": {"session_id": sid},
        "get_session_info": {"session_id": sid},
        "list_client_sessions": {"client_id": "alice"},
    }[command]


@pytest.mark.parametrize(("command", "param"), REQUIRED)
def test_missing_required_parameter(client: Client, sid: str, command: str, param: str) -> None:
    params = valid_params(command, sid)
    del params[param]
    reply = client.err(command, "ValidationError", **params)
    assert reply["details"]["field"] == param
    params[param] = None  # null is "missing" too
    client.err(command, "ValidationError", **params)
    assert client.revision(sid) == 1


@pytest.mark.parametrize(("command", "param"), REQUIRED)
@pytest.mark.parametrize("value", [1, 0, -1, 1.5, True, False, [], ["x"], {}, {"a": "b"}])
def test_wrong_type(client: Client, sid: str, command: str, param: str, value: Any) -> None:
    params = valid_params(command, sid)
    params[param] = value
    if param == "state_data" and isinstance(value, dict):
        return  # any object is a valid state
    reply = client.err(command, "ValidationError", **params)
    assert reply["details"]["field"] == param
    assert client.revision(sid) == 1


@pytest.mark.parametrize("value", ["", "x", "[1]", "null"])
def test_state_data_as_a_string(client: Client, sid: str, value: str) -> None:
    client.err("update_session_state", "ValidationError", session_id=sid, state_data=value)


BAD_SESSION_IDS = [
    "../../x",
    "",
    " ",
    "session_",
    "session_" + "A" * 42,
    "session_" + "A" * 44,
    "session_" + "A" * 42 + "/",
    "session_" + "A" * 42 + ".",
    "session_" + "é" * 43,
    "session_" + "\U0001f600" * 43,
    "sessión_" + "A" * 43,
    "session_" + "A" * 43 + "\n",
    " session_" + "A" * 43,
    "SESSION_" + "A" * 43,
    "session_" + "A" * 10_000,
    "x" * 100_000,
    "../../../../etc/passwd",
    "session_" + "A" * 20 + "\x00" + "A" * 22,
    "session_1_1756713600_0000000042",  # upstream's example shape is not ours
]


@pytest.mark.parametrize(
    "command", ["restore_session", "update_session_state", "close_session", "get_session_info"]
)
@pytest.mark.parametrize("bad", BAD_SESSION_IDS)
def test_session_id_in_another_format_answers_session_not_found(
    client: Client, command: str, bad: str
) -> None:
    # upstream clients fall back to create_session on SessionNotFound (issue 18)
    params = valid_params(command, bad)
    reply = client.err(command, "SessionNotFound", **params)
    assert reply["error_type"] == "SessionNotFound"
    assert reply["error"] == "Session not found"
    assert "details" not in reply
    if len(bad) > 12:
        assert bad not in reply["error"]  # a guessed secret is never echoed


@pytest.mark.parametrize(
    "command", ["restore_session", "update_session_state", "close_session", "get_session_info"]
)
def test_unknown_session_id(client: Client, command: str) -> None:
    reply = client.err(command, "SessionNotFound", **valid_params(command, UNKNOWN_SID))
    assert "reason" not in reply.get("details", {})


@pytest.mark.parametrize("command", ["create_session", "list_client_sessions"])
@pytest.mark.parametrize("bad", ["", " ", "   ", "a" * 257, "a\x00b", "tab\tx", "line\n", "\x7f"])
def test_malformed_client_id(client: Client, command: str, bad: str) -> None:
    reply = client.err(command, "ValidationError", client_id=bad)
    assert reply["details"]["field"] == "client_id"


def test_unicode_and_long_client_ids_are_accepted(client: Client) -> None:
    for cid in ("ünïcødé-客户端-🚀", "a" * 256, "with space", "../../x"):
        r = client.ok("create_session", client_id=cid)
        assert r["client_id"] == cid
        listed = client.ok("list_client_sessions", client_id=cid)
        assert listed["session_count"] == 1 and listed["client_id"] == cid


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("mode", "patch"),
        ("mode", 1),
        ("mode", ["merge"]),
        ("base_revision", "3"),
        ("base_revision", 0),
        ("base_revision", -1),
        ("base_revision", 1.0),
        ("base_revision", True),
        ("changes", []),
        ("changes", {"no_such_section": {}}),
        ("workspace_context", "x"),
        ("inspector_state", []),
        ("object_registry", ["obj_1"]),
        ("object_registry", {"obj_1": 7}),
        ("object_registry", {"obj_1": {"print_string": "x"}}),
        ("object_registry", {"obj_1": ["x"]}),
        ("object_registry", {"obj_1": True}),
        ("client_id", 5),
        ("client_version", 5),
    ],
)
def test_bad_optional_update_parameter(client: Client, sid: str, param: str, value: Any) -> None:
    client.ok("update_session_state", session_id=sid, state_data={"keep": 1})
    params = {"session_id": sid, "state_data": {"k": 1}, param: value}
    reply = client.err("update_session_state", "ValidationError", **params)
    assert reply["details"]["field"] == param
    assert client.revision(sid) == 2
    assert client.state(sid) == {"keep": 1}


def test_close_save_state_must_be_a_boolean(client: Client, sid: str) -> None:
    client.err("close_session", "ValidationError", session_id=sid, save_state="yes")
    assert client.ok("close_session", session_id=sid, save_state=False)["closed"] is True


# -- update semantics ---------------------------------------------------------------------
def test_update_replaces_by_default(client: Client, sid: str) -> None:
    client.ok("update_session_state", session_id=sid, state_data={"a": 1, "b": {"c": 2}})
    r = client.ok("update_session_state", session_id=sid, state_data={"b": {"d": 3}})
    assert r["session_state"] == {"b": {"d": 3}}
    r = client.ok("update_session_state", session_id=sid, state_data={"z": 0}, mode="replace")
    assert r["session_state"] == {"z": 0}
    assert client.state(sid) == {"z": 0}
    r = client.ok("update_session_state", session_id=sid, state_data={})
    assert r["session_state"] == {} == client.state(sid)


def test_update_merge_is_an_rfc7386_merge_patch(client: Client, sid: str) -> None:
    client.ok(
        "update_session_state",
        session_id=sid,
        state_data={"a": 1, "b": {"c": 2, "d": 3}, "l": [1, 2], "keep": "k", "s": "v"},
    )
    r = client.ok(
        "update_session_state",
        session_id=sid,
        mode="merge",
        state_data={
            "a": None,  # null deletes
            "b": {"c": None, "e": 4},  # objects merge recursively
            "l": [3],  # arrays replace
            "s": {"now": "an object"},  # a scalar is replaced by an object
            "n": {"x": None, "y": 1},  # a new object is created without its nulls
            "missing": None,  # deleting an absent key is a no-op
        },
    )
    expected = {
        "b": {"d": 3, "e": 4},
        "l": [3],
        "keep": "k",
        "s": {"now": "an object"},
        "n": {"y": 1},
    }
    assert r["session_state"] == expected
    assert client.state(sid) == expected
    # an empty patch changes nothing but is still an update
    before = client.revision(sid)
    r = client.ok("update_session_state", session_id=sid, mode="merge", state_data={})
    assert r["session_state"] == expected and r["revision"] == before + 1


def test_merge_into_an_empty_state(client: Client, sid: str) -> None:
    r = client.ok(
        "update_session_state", session_id=sid, mode="merge", state_data={"a": {"b": None}}
    )
    assert r["session_state"] == {"a": {}}


def test_every_update_increments_the_revision(client: Client, sid: str) -> None:
    for i in range(5):
        r = client.ok("update_session_state", session_id=sid, state_data={"i": i})
        assert r["revision"] == i + 2
    assert client.ok("restore_session", session_id=sid)["revision"] == 6


def test_base_revision_current_is_applied(client: Client, sid: str) -> None:
    r = client.ok("update_session_state", session_id=sid, state_data={"a": 1}, base_revision=1)
    assert r["revision"] == 2
    r = client.ok("update_session_state", session_id=sid, state_data={"a": 2}, base_revision=2)
    assert r["revision"] == 3


def test_stale_base_revision_conflicts(client: Client, sid: str) -> None:
    client.ok("update_session_state", session_id=sid, state_data={"a": 1})  # -> 2
    client.ok("update_session_state", session_id=sid, state_data={"a": 2})  # -> 3
    reply = client.err(
        "update_session_state", "Conflict", session_id=sid, state_data={"a": 9}, base_revision=2
    )
    assert reply["details"]["current_revision"] == 3
    assert client.state(sid) == {"a": 2} and client.revision(sid) == 3
    # rebased on the current revision it goes through
    client.ok("update_session_state", session_id=sid, state_data={"a": 9}, base_revision=3)
    assert client.state(sid) == {"a": 9}


def test_stale_merge_of_the_same_key_conflicts(client: Client, sid: str) -> None:
    client.ok("update_session_state", session_id=sid, state_data={"a": 1, "b": 1})  # -> 2
    client.ok("update_session_state", session_id=sid, mode="merge", state_data={"a": 2})  # -> 3
    reply = client.err(
        "update_session_state",
        "Conflict",
        session_id=sid,
        mode="merge",
        state_data={"a": 3},
        base_revision=2,
    )
    assert reply["details"]["current_revision"] == 3


def test_stale_merge_of_another_key_is_merged(client: Client, sid: str) -> None:
    client.ok("update_session_state", session_id=sid, state_data={"a": 1, "b": 1})  # -> 2
    client.ok("update_session_state", session_id=sid, mode="merge", state_data={"a": 2})  # -> 3
    r = client.ok(
        "update_session_state", session_id=sid, mode="merge", state_data={"b": 2}, base_revision=2
    )
    assert r["revision"] == 4
    assert r["session_state"] == {"a": 2, "b": 2}


def test_base_revision_from_the_future_conflicts(client: Client, sid: str) -> None:
    reply = client.err(
        "update_session_state", "Conflict", session_id=sid, state_data={"a": 1}, base_revision=5
    )
    assert reply["details"]["current_revision"] == 1
    assert client.revision(sid) == 1


def test_workspace_context_inspector_state_and_object_registry(client: Client, sid: str) -> None:
    r = client.ok(
        "update_session_state",
        session_id=sid,
        workspace_context={"variables": ["x"]},
        inspector_state={"selected_object": "obj_7"},
        object_registry={"obj_7": "a SmallInteger(7)", "obj_8": "an OrderedCollection()"},
    )
    assert r["update_successful"] is True and r["revision"] == 2
    restored = client.ok("restore_session", session_id=sid)
    assert restored["workspace_context"]["variables"] == ["x"]
    assert restored["inspector_state"]["selected_object"] == "obj_7"
    assert restored["object_registry"] == {
        "obj_7": "a SmallInteger(7)",
        "obj_8": "an OrderedCollection()",
    }
    assert restored["session_state"] == {}  # the sections leave session_state alone
    # registry entries merge; null removes one
    client.ok(
        "update_session_state", session_id=sid, object_registry={"obj_8": None, "obj_9": "nil"}
    )
    restored = client.ok("restore_session", session_id=sid)
    assert restored["object_registry"] == {"obj_7": "a SmallInteger(7)", "obj_9": "nil"}
    assert restored["workspace_context"]["variables"] == ["x"]


def test_sections_and_state_data_in_one_update(client: Client, sid: str) -> None:
    client.ok(
        "update_session_state",
        session_id=sid,
        state_data={"workspace": "x := 3 + 4."},
        workspace_context={"variables": ["x"]},
        object_registry={"obj_7": "7"},
    )
    restored = client.ok("restore_session", session_id=sid)
    assert restored["session_state"] == {"workspace": "x := 3 + 4."}
    assert restored["object_registry"] == {"obj_7": "7"}
    assert client.revision(sid) == 2  # one update, one revision


def test_preferences_and_metadata_sections(client: Client, sid: str) -> None:
    client.ok(
        "update_session_state",
        session_id=sid,
        changes={"preferences": {"theme": "dark", "font": "mono"}, "metadata": {"note": "hi"}},
        client_version="1.2.3",
    )
    restored = client.ok("restore_session", session_id=sid)
    assert restored["preferences"]["theme"] == "dark"
    assert restored["preferences"]["font"] == "mono"
    assert restored["metadata"]["note"] == "hi"
    assert restored["metadata"]["last_client_version"] == "1.2.3"
    assert restored["metadata"]["updates"] == 1
    client.ok("update_session_state", session_id=sid, changes={"preferences": {"font": None}})
    restored = client.ok("restore_session", session_id=sid)
    assert "font" not in restored["preferences"]
    assert restored["preferences"]["theme"] == "dark"
    assert restored["metadata"]["updates"] == 2


def test_an_update_without_any_state_is_refused(client: Client, sid: str) -> None:
    reply = client.err("update_session_state", "ValidationError", session_id=sid)
    assert reply["details"]["field"] == "state_data"


def test_state_too_large(make_client: Callable[..., Client]) -> None:
    client = make_client(max_snapshot_size=4096)
    sid = client.create()
    client.ok("update_session_state", session_id=sid, state_data={"small": "x"})
    rng = random.Random(4096)
    blob = rng.randbytes(5_000).hex()  # incompressible beyond the hex encoding
    reply = client.err(
        "update_session_state", "StateTooLarge", session_id=sid, state_data={"big": blob}
    )
    details = reply["details"]
    assert details["limit"] == 4096 and details["size"] > 4096
    assert {"session_state", "workspace_context", "object_registry"} <= set(details["parts"])
    assert details["parts"]["session_state"] > 4096
    assert all(is_int(v) for v in details["parts"].values())
    # nothing changed
    assert client.revision(sid) == 2
    assert client.state(sid) == {"small": "x"}
    # also through a section
    registry = {f"obj_{i}": rng.randbytes(32).hex() for i in range(200)}
    reply = client.err(
        "update_session_state", "StateTooLarge", session_id=sid, object_registry=registry
    )
    assert reply["details"]["parts"]["object_registry"] > 4096
    assert client.revision(sid) == 2
    assert client.ok("restore_session", session_id=sid)["object_registry"] == {}


# -- limits and access lists ----------------------------------------------------------------
def test_per_client_limit(make_client: Callable[..., Client]) -> None:
    client = make_client(max_sessions_per_client=2)
    first = client.create("alice")
    client.create("alice")
    reply = client.err("create_session", "SessionError", client_id="alice")
    assert reply["details"]["limit"] == 2
    client.create("bob")  # other clients are not affected
    assert client.ok("list_client_sessions", client_id="alice")["session_count"] == 2
    # closed sessions don't count
    client.ok("close_session", session_id=first)
    client.create("alice")
    client.err("create_session", "SessionError", client_id="alice")


def test_expired_sessions_do_not_count_toward_the_limit(make_client: Callable[..., Client]) -> None:
    client = make_client(max_sessions_per_client=1, session_timeout=60)
    client.create("alice")
    client.err("create_session", "SessionError", client_id="alice")
    client.clock.advance(60)
    client.create("alice")


def test_deny_list(make_client: Callable[..., Client]) -> None:
    client = make_client(deny_clients={"mallory"})
    client.err("create_session", "SessionError", client_id="mallory")
    client.create("alice")
    client.err("list_client_sessions", "AccessDenied", client_id="mallory")


def test_allow_list(make_client: Callable[..., Client]) -> None:
    client = make_client(allow_clients={"alice"})
    client.create("alice")
    client.err("create_session", "SessionError", client_id="bob")


def test_a_client_denied_later_can_not_use_its_sessions(make_client: Callable[..., Client]) -> None:
    sid = make_client().create("mallory")
    denied = make_client(deny_clients={"mallory"})
    for command in ("restore_session", "update_session_state", "close_session", "get_session_info"):
        reply = denied.err(command, "SessionNotFound", **valid_params(command, sid))
        assert "details" not in reply
    assert make_client().revision(sid) == 1


# -- ownership --------------------------------------------------------------------------
OWNED = ["restore_session", "update_session_state", "close_session", "get_session_info"]


@pytest.mark.parametrize("command", OWNED)
def test_client_id_mismatch_looks_like_a_missing_session(
    client: Client, sid: str, command: str
) -> None:
    """Another client's session and a missing one get the same reply (docs/protocol.md:
    ``AccessDenied``, "Session not found or access denied", no details)."""
    theirs = client.err(command, "SessionNotFound", **valid_params(command, sid), client_id="bob")
    missing = client.err(
        command, "SessionNotFound", **valid_params(command, UNKNOWN_SID), client_id="bob"
    )
    strip = {"id", "timestamp"}
    assert {k: v for k, v in theirs.items() if k not in strip} == {
        k: v for k, v in missing.items() if k not in strip
    }
    assert "details" not in theirs
    assert sid not in json.dumps(theirs)
    info = client.ok("get_session_info", session_id=sid, client_id="alice")
    assert info["revision"] == 1 and info["is_active"] is True


def test_the_owner_may_name_itself(client: Client, sid: str) -> None:
    for command in OWNED:
        client.ok(command, **valid_params(command, sid), client_id="alice")


# -- lifecycle --------------------------------------------------------------------------
def test_close_is_idempotent(client: Client, sid: str) -> None:
    first = client.ok("close_session", session_id=sid)
    again = client.ok("close_session", session_id=sid)
    assert first == again == {"session_id": sid, "closed": True, "revision": 2}


def test_a_closed_session_can_not_be_used(client: Client, sid: str) -> None:
    client.ok("update_session_state", session_id=sid, state_data={"a": 1})
    client.ok("close_session", session_id=sid)
    for command in ("restore_session", "update_session_state"):
        reply = client.err(command, "SessionNotFound", **valid_params(command, sid))
        assert reply["details"]["reason"] == "closed"
    info = client.ok("get_session_info", session_id=sid)
    assert info["is_active"] is False and info["status"] == "closed"
    assert info["time_until_expiry"] == 0
    assert client.ok("list_client_sessions", client_id="alice")["session_count"] == 0


def test_restore_after_the_idle_timeout(client: Client, sid: str) -> None:
    client.clock.advance(3599)
    client.ok("get_session_info", session_id=sid)  # info does not touch
    client.clock.advance(1)
    reply = client.err("restore_session", "SessionNotFound", session_id=sid)
    assert reply["details"]["reason"] == "expired"
    reply = client.err(
        "update_session_state", "SessionNotFound", **valid_params("update_session_state", sid)
    )
    assert reply["details"]["reason"] == "expired"
    info = client.ok("get_session_info", session_id=sid)
    assert info["is_expired"] is True and info["is_active"] is False
    assert info["time_until_expiry"] == 0 and info["status"] == "expired"
    listed = client.ok("list_client_sessions", client_id="alice")["sessions"]
    assert [(s["session_id"], s["is_active"], s["time_until_expiry"]) for s in listed] == [
        (sid, False, 0)
    ]


def test_restore_slides_the_idle_timeout_without_a_new_revision(client: Client, sid: str) -> None:
    client.ok("update_session_state", session_id=sid, state_data={"a": 1})  # revision 2
    for _ in range(4):
        client.clock.advance(3000)  # each step alone is within the timeout
        r = client.ok("restore_session", session_id=sid)
        assert r["revision"] == 2 and r["is_active"] is True
        assert r["time_until_expiry"] == 3600
    info = client.ok("get_session_info", session_id=sid)
    assert info["revision"] == 2
    assert info["last_modified"] == START  # access is not modification
    assert info["last_accessed"] == "2026-01-01T03:20:00Z"
    assert info["time_until_expiry"] == 3600
    client.clock.advance(3600)
    client.err("restore_session", "SessionNotFound", session_id=sid)


def test_absolute_lifetime(make_client: Callable[..., Client]) -> None:
    client = make_client(absolute_lifetime=5000)
    sid = client.create()
    client.clock.advance(3000)
    client.ok("restore_session", session_id=sid)
    client.clock.advance(2000)
    reply = client.err("restore_session", "SessionNotFound", session_id=sid)
    assert reply["details"]["reason"] == "expired"


def test_cleanup_expired(client: Client) -> None:
    closed = client.create("a")
    expiring = client.create("b")
    client.ok("close_session", session_id=closed)
    client.clock.advance(3000)
    alive = client.create("c")
    client.clock.advance(600)  # `expiring` is now past its timeout, `alive` is not
    assert client.handler.cleanup_expired() == 2
    for gone in (closed, expiring):
        reply = client.err("get_session_info", "SessionNotFound", session_id=gone)
        assert "reason" not in reply.get("details", {})
        client.err("restore_session", "SessionNotFound", session_id=gone)
    client.ok("restore_session", session_id=alive)
    assert client.handler.cleanup_expired() == 0
    stats = client.ok("get_session_statistics")
    assert stats["total_sessions"] == 1 and stats["active_clients"] == 1


def test_retention(make_client: Callable[..., Client]) -> None:
    # written by a server with a long timeout, served by one with a short retention
    sid = make_client(session_timeout=10_000, retention=100_000).create()
    strict = make_client(session_timeout=50, retention=100)
    strict.clock.advance(101)
    reply = strict.err("restore_session", "SessionNotFound", session_id=sid)
    assert reply["details"]["reason"] == "expired"
    assert strict.handler.cleanup_expired() == 1
    strict.err("get_session_info", "SessionNotFound", session_id=sid)


# -- state fidelity -------------------------------------------------------------------
SAMPLE_STATE = {
    "workspace": "x := 3 + 4.\n\"ünïcødé\" printNl. '日本語' 🚀",
    "big": 2**200,
    "negative_big": -(10**60),
    "floats": [0.1, -2.5e-300, 1.7976931348623157e308, 5e-324, -0.0, 1e16],
    "nested": {"a": [{"b": [None, True, False, {"c": []}]}], "": {"": ""}},
    "controls": '\x00\x01\x1f\u2028\u2029\\"',
    "ref_like": {"$ref": "no such object"},
    "placeholder_like": "\x00raw0123456789abcdef",
}


def test_restore_returns_the_state_as_sent(client: Client, sid: str) -> None:
    client.ok("update_session_state", session_id=sid, state_data=SAMPLE_STATE)
    message = envelope("r", "restore_session", session_id=sid)
    assert client.handler.handle(message)["result"]["session_state"] == SAMPLE_STATE
    wire = json.loads(client.handler.handle_wire(message))
    assert wire["result"]["session_state"] == SAMPLE_STATE
    assert math.copysign(1, wire["result"]["session_state"]["floats"][4]) == -1


def test_key_order_is_irrelevant(client: Client, sid: str) -> None:
    client.ok("update_session_state", session_id=sid, state_data={"b": 1, "a": {"z": 1, "y": 2}})
    assert client.state(sid) == {"a": {"y": 2, "z": 1}, "b": 1}


def test_state_survives_a_new_handler_on_the_same_store(
    client: Client, sid: str, store: MemoryStore, clock: ManualClock
) -> None:
    client.ok("update_session_state", session_id=sid, state_data=SAMPLE_STATE)
    client.ok("update_session_state", session_id=sid, object_registry={"obj_1": "nil"})
    fresh = Client(
        ProtocolHandler(store, Policy(rate_limit=None), clock=clock), clock, client.tokens
    )
    restored = fresh.ok("restore_session", session_id=sid)
    assert restored["session_state"] == SAMPLE_STATE
    assert restored["object_registry"] == {"obj_1": "nil"}
    assert restored["revision"] == 3 and restored["client_id"] == "alice"
    assert fresh.ok("list_client_sessions", client_id="alice")["session_count"] == 1


_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**300), max_value=2**300)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=25,
)
json_states = st.dictionaries(st.text(max_size=12), json_values, max_size=6)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(state=json_states, patch=json_states)
def test_state_round_trips_as_a_json_value(state: dict[str, Any], patch: dict[str, Any]) -> None:
    clock = ManualClock()
    handler = ProtocolHandler(MemoryStore(), Policy(rate_limit=None), clock=clock)
    client = Client(handler, clock)
    sid = client.create()
    r = client.ok("update_session_state", session_id=sid, state_data=state)
    assert r["session_state"] == state
    # through the wire: re-serialised with another key order
    text = json.dumps(
        {
            "id": "u",
            "command": "update_session_state",
            "parameters": {"session_id": sid, "state_data": state},
        },
        sort_keys=True,
    )
    assert json.loads(handler.handle_wire(text))["result"]["session_state"] == state
    restore = envelope("r", "restore_session", session_id=sid)
    assert handler.handle(restore)["result"]["session_state"] == state
    assert json.loads(handler.handle_wire(restore))["result"]["session_state"] == state
    merged = client.ok("update_session_state", session_id=sid, state_data=patch, mode="merge")
    assert merged["session_state"] == _merge_patch(state, patch)
    assert client.state(sid) == merged["session_state"]


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386, written out independently of the library."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge_patch(out.get(key), value)
    return out


# -- handle and handle_wire agree ----------------------------------------------------
def _agreement_messages(sid: str) -> Iterator[bytes | str]:
    yield envelope("a1", "create_session", client_id="zed")
    yield envelope("a2", "update_session_state", session_id=sid, state_data=SAMPLE_STATE)
    yield envelope("a3", "update_session_state", session_id=sid, state_data={"m": 1}, mode="merge")
    yield envelope("a4", "update_session_state", session_id=sid, object_registry={"o": "x"})
    yield envelope("a5", "restore_session", session_id=sid)
    yield envelope(6, "get_session_info", session_id=sid)
    yield envelope("a7", "list_client_sessions", client_id="alice")
    yield envelope("a8", "get_session_statistics")
    yield envelope("a9", "restore_session", session_id=UNKNOWN_SID)
    yield envelope("a10", "restore_session", session_id="../../x")
    yield envelope(
        "a11", "update_session_state", session_id=sid, state_data={"a": 1}, base_revision=1
    )
    yield envelope("a12", "nope")
    yield envelope("a13", "create_session")
    yield envelope("a14", "create_session", client_id=["x"])
    yield b"not json"
    yield b"[]"
    yield b"\xff"
    yield '{"id": "a15", "command": "get_session_info", "parameters": {"session_id": 1}}'
    yield envelope("a16", "restore_session", session_id=sid).decode()
    yield envelope("a17", "close_session", session_id=sid)
    yield envelope("a18", "close_session", session_id=sid)
    yield envelope("a19", "restore_session", session_id=sid)
    yield envelope("a20", "get_session_info", session_id=sid)


def test_handle_and_handle_wire_agree(client: Client, sid: str) -> None:
    handler = client.handler
    for i, message in enumerate(_agreement_messages(sid)):
        if i % 2:
            wire = json.loads(handler.handle_wire(message))
            direct = handler.handle(message)
        else:
            direct = handler.handle(message)
            wire = json.loads(handler.handle_wire(message))
        assert wire == direct, message
        assert direct["timestamp"] == START


# -- internal errors --------------------------------------------------------------------
class _BrokenStore(MemoryStore):
    """A store whose reads fail with an unexpected exception (a bug or a crashed backend)."""

    def load_snapshot(self, session_id: str) -> Any:
        raise RuntimeError("boom: secret-internals")

    def load_info(self, session_id: str) -> Any:
        raise RuntimeError("boom: secret-internals")


def test_internal_error_is_a_runtime_error(clock: ManualClock) -> None:
    handler = ProtocolHandler(_BrokenStore(), Policy(rate_limit=None), clock=clock)
    message = envelope("i", "restore_session", session_id=UNKNOWN_SID)
    for reply in (handler.handle(message), json.loads(handler.handle_wire(message))):
        assert "secret" not in json.dumps(reply)
        assert_error(reply, "InternalError", "i")
        assert reply["error_type"] == "RuntimeError"


def test_internal_error_never_raises_and_hides_details(clock: ManualClock) -> None:
    handler = ProtocolHandler(_BrokenStore(), Policy(rate_limit=None), clock=clock)
    message = envelope("i", "get_session_info", session_id=UNKNOWN_SID)
    for reply in (handler.handle(message), json.loads(handler.handle_wire(message))):
        assert reply["status"] == "error" and reply["id"] == "i"
        assert "result" not in reply and "secret" not in json.dumps(reply)


# -- integers beyond Python's int/str conversion limit (mapping messages only) ----------
def _huge_digits() -> int:
    limit = sys.get_int_max_str_digits()
    if limit == 0:
        pytest.skip("int/str conversion is unlimited in this interpreter")
    return limit + 10


def _huge_int() -> int:
    return 10 ** (_huge_digits() - 1)


def test_huge_integers_in_a_wire_message_are_invalid(handler: ProtocolHandler, sid: str) -> None:
    digits = _huge_digits()
    message = (
        '{"id": "h", "command": "update_session_state", "parameters": '
        f'{{"session_id": "{sid}", "state_data": {{"x": 1{"0" * digits}}}}}}}'
    )
    for reply in (handler.handle(message), json.loads(handler.handle_wire(message))):
        assert_error(reply, "InvalidRequest", None)


@pytest.mark.parametrize("where", ["id", "state_data"])
def test_huge_integers_in_a_mapping_message_never_raise(
    client: Client, sid: str, where: str
) -> None:
    huge = _huge_int()
    message: dict[str, Any] = {
        "id": huge if where == "id" else "h",
        "command": "update_session_state",
        "parameters": {
            "session_id": sid,
            "state_data": {"x": huge if where == "state_data" else 1},
        },
    }
    reply = client.handler.handle(message)
    assert reply["status"] in ("success", "error")
    if where == "state_data":
        assert_error(reply, "ValidationError", "h")
        assert client.revision(sid) == 1


# -- lone surrogates (valid JSON escapes, not encodable as UTF-8) -------------------------------
def test_lone_surrogates_in_state_are_refused(client: Client, sid: str) -> None:
    for state in ({"k": "\ud800"}, {"\udfff": 1}, {"k": ["ok", "\udc00x"]}):
        reply = client.err(
            "update_session_state", "ValidationError", session_id=sid, state_data=state
        )
        assert reply["details"]["field"] == "state_data"
    client.err("create_session", "ValidationError", client_id="\ud800")
    assert client.revision(sid) == 1


def test_lone_surrogate_in_client_version_is_a_validation_error(client: Client, sid: str) -> None:
    client.err("create_session", "ValidationError", client_id="x", client_version="\ud800")
    client.err(
        "update_session_state",
        "ValidationError",
        session_id=sid,
        state_data={},
        client_version="\ud800",
    )


def test_lone_surrogate_in_request_id(handler: ProtocolHandler, sid: str) -> None:
    update = (
        '{"id": "\\ud800", "command": "update_session_state", '
        f'"parameters": {{"session_id": "{sid}", "state_data": {{"k": 1}}}}}}'
    ).encode()
    wire = json.loads(handler.handle_wire(update))
    info = handler.handle(envelope("i", "get_session_info", session_id=sid))["result"]
    # either refused before anything happens, or acknowledged: never "failed" yet applied
    if wire["status"] == "error":
        assert info["revision"] == 1, wire
    else:
        assert info["revision"] == 2


def test_lone_surrogate_in_command(handler: ProtocolHandler) -> None:
    unknown = json.loads(handler.handle_wire(b'{"id": "x", "command": "\\ud800"}'))
    assert_error(unknown, "UnknownCommand", "x")

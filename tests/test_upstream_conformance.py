"""Fifty upstream-shaped conformance cases (issue 18, part 1).

Each request is exactly what an upstream STUI client sends: the flat envelope
``{"id", "command", "parameters"}`` as JSON bytes, with the upstream parameter names
(including ``client_id`` next to ``session_id`` in ``restore_session``, as the Rust
``RestoreSessionRequest`` has it). Each case asserts the upstream ``error_type`` (one of
``SessionError``, ``SessionNotFound``, ``RuntimeError``, ``Error``) or the upstream result
fields; our finer ``error_code`` and ``details`` are additive.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable
from typing import Any

import pytest

from stuisession import ManualClock, MemoryStore, Policy, ProtocolHandler
from stuisession.security.identity import Caller

UPSTREAM_TYPES = {"SessionError", "SessionNotFound", "RuntimeError", "Error"}
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\Z")
PHARO_ID = "session_4_1756713600_0000000042"  # the shape the Pharo backend issues
UNKNOWN = "session_" + "Q" * 43  # our format, never issued
OWNER = "tui-laptop-01"

CREATE_KEYS = {"session_id", "client_id", "created_at", "timeout", "is_active"}
RESTORE_KEYS = CREATE_KEYS | {
    "last_modified",
    "session_state",
    "workspace_context",
    "inspector_state",
    "object_registry",
}
UPDATE_KEYS = {"session_id", "last_modified", "session_state", "update_successful"}
INFO_KEYS = CREATE_KEYS | {"last_modified", "time_until_expiry", "is_expired"}
LIST_ITEM_KEYS = {
    "session_id",
    "created_at",
    "last_modified",
    "timeout",
    "is_active",
    "time_until_expiry",
}
STATS_KEYS = {
    "total_sessions",
    "active_clients",
    "max_sessions_per_client",
    "default_timeout",
    "cleanup_interval",
}


class World:
    """A bridge-less handler with one session of OWNER's and one of another client's."""

    def __init__(self, policy: Policy | None = None) -> None:
        self.clock = ManualClock()
        self.handler = ProtocolHandler(
            MemoryStore(), policy or Policy(rate_limit=None), clock=self.clock
        )
        self._ids = itertools.count()
        created = self.ok("create_session", client_id=OWNER)
        self.mine = created["session_id"]
        #: the owner's proof for list_client_sessions (issue 16: a client id is a claim)
        self.client_token = created["client_token"]
        self.foreign = self.ok("create_session", client_id="someone-else")["session_id"]

    def raw(self, body: bytes) -> dict[str, Any]:
        reply = self.handler.handle(body)
        check_reply_shape(reply)
        return reply

    def send(self, command: str, parameters: dict[str, Any] | None = None) -> dict[str, Any]:
        rid = f"req-{next(self._ids)}"
        doc: dict[str, Any] = {"id": rid, "command": command}
        if parameters is not None:
            doc["parameters"] = parameters
        reply = self.raw(json.dumps(doc).encode())
        assert reply["id"] == rid  # the request id is echoed
        return reply

    def ok(self, command: str, **parameters: Any) -> dict[str, Any]:
        reply = self.send(command, parameters)
        assert reply["status"] == "success", reply
        result: dict[str, Any] = reply["result"]
        return result


def check_reply_shape(reply: dict[str, Any]) -> None:
    assert reply["status"] in ("success", "error"), reply
    assert TIMESTAMP.match(reply["timestamp"]), reply
    if reply["status"] == "success":
        assert isinstance(reply["result"], dict)
        assert "error" not in reply and "error_type" not in reply
    else:
        assert "result" not in reply
        assert isinstance(reply["error"], str) and reply["error"]
        assert reply["error_type"] in UPSTREAM_TYPES, reply
        assert isinstance(reply["error_code"], str)


def error_of(w: World, command: str, parameters: dict[str, Any] | None) -> str:
    reply = w.send(command, parameters)
    assert reply["status"] == "error", reply
    return str(reply["error_type"])


# -- error cases: (name, command, parameters built from the world, upstream error_type) --
Params = Callable[[World], dict[str, Any] | None]
ERROR_CASES: list[tuple[str, str, Params, str]] = [
    ("create_missing_client_id", "create_session", lambda w: {}, "SessionError"),
    ("create_null_client_id", "create_session", lambda w: {"client_id": None}, "SessionError"),
    ("create_numeric_client_id", "create_session", lambda w: {"client_id": 7}, "SessionError"),
    ("create_blank_client_id", "create_session", lambda w: {"client_id": "  "}, "SessionError"),
    ("create_no_parameters_member", "create_session", lambda w: None, "SessionError"),
    ("restore_missing_session_id", "restore_session", lambda w: {}, "SessionError"),
    ("restore_null_session_id", "restore_session", lambda w: {"session_id": None}, "SessionError"),
    ("restore_numeric_session_id", "restore_session", lambda w: {"session_id": 4}, "SessionError"),
    ("restore_unknown", "restore_session", lambda w: {"session_id": UNKNOWN}, "SessionNotFound"),
    (
        "restore_unknown_with_client_id",
        "restore_session",
        lambda w: {"session_id": UNKNOWN, "client_id": OWNER},
        "SessionNotFound",
    ),
    (
        "restore_foreign_with_client_id",
        "restore_session",
        lambda w: {"session_id": w.foreign, "client_id": OWNER},
        "SessionNotFound",
    ),
    ("restore_pharo_id", "restore_session", lambda w: {"session_id": PHARO_ID}, "SessionNotFound"),
    (
        "restore_pharo_id_with_client_id",
        "restore_session",
        lambda w: {"session_id": PHARO_ID, "client_id": OWNER},
        "SessionNotFound",
    ),
    ("restore_empty_id", "restore_session", lambda w: {"session_id": ""}, "SessionNotFound"),
    (
        "update_missing_session_id",
        "update_session_state",
        lambda w: {"state_data": {}},
        "SessionError",
    ),
    (
        "update_missing_state_data",
        "update_session_state",
        lambda w: {"session_id": w.mine},
        "SessionError",
    ),
    (
        "update_state_data_not_object",
        "update_session_state",
        lambda w: {"session_id": w.mine, "state_data": [1, 2]},
        "SessionError",
    ),
    (
        "update_unknown",
        "update_session_state",
        lambda w: {"session_id": UNKNOWN, "state_data": {"a": 1}},
        "SessionNotFound",
    ),
    (
        "update_foreign_with_client_id",
        "update_session_state",
        lambda w: {"session_id": w.foreign, "client_id": OWNER, "state_data": {"a": 1}},
        "SessionNotFound",
    ),
    (
        "update_pharo_id",
        "update_session_state",
        lambda w: {"session_id": PHARO_ID, "state_data": {"a": 1}},
        "SessionNotFound",
    ),
    ("close_missing_session_id", "close_session", lambda w: {}, "SessionError"),
    ("close_unknown", "close_session", lambda w: {"session_id": UNKNOWN}, "SessionNotFound"),
    (
        "close_foreign_with_client_id",
        "close_session",
        lambda w: {"session_id": w.foreign, "client_id": OWNER},
        "SessionNotFound",
    ),
    ("close_pharo_id", "close_session", lambda w: {"session_id": PHARO_ID}, "SessionNotFound"),
    ("info_missing_session_id", "get_session_info", lambda w: {}, "SessionError"),
    ("info_null_session_id", "get_session_info", lambda w: {"session_id": None}, "SessionError"),
    ("info_unknown", "get_session_info", lambda w: {"session_id": UNKNOWN}, "SessionNotFound"),
    (
        "info_foreign_with_client_id",
        "get_session_info",
        lambda w: {"session_id": w.foreign, "client_id": OWNER},
        "SessionNotFound",
    ),
    ("info_pharo_id", "get_session_info", lambda w: {"session_id": PHARO_ID}, "SessionNotFound"),
    ("list_missing_client_id", "list_client_sessions", lambda w: {}, "SessionError"),
    ("unknown_command", "evaluate_everything", lambda w: {}, "Error"),
]


@pytest.mark.parametrize(
    ("command", "params", "expected"),
    [pytest.param(c, p, e, id=n) for n, c, p, e in ERROR_CASES],
)
def test_upstream_error_type(command: str, params: Params, expected: str) -> None:
    w = World()
    assert error_of(w, command, params(w)) == expected


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"{not json", id="invalid_json"),
        pytest.param(b'{"id": "x", "parameters": {}}', id="missing_command"),
        pytest.param(
            b'{"id": "x", "command": "get_session_info", "parameters": 5}', id="bad_params"
        ),
    ],
)
def test_envelope_errors_are_upstream_error(body: bytes) -> None:
    reply = World().raw(body)
    assert reply["error_type"] == "Error"
    assert reply["error_code"] == "InvalidRequest"


def test_closed_session_is_not_found() -> None:
    w = World()
    w.ok("close_session", session_id=w.mine)
    assert error_of(w, "restore_session", {"session_id": w.mine}) == "SessionNotFound"
    assert error_of(w, "update_session_state", {"session_id": w.mine, "state_data": {}}) == (
        "SessionNotFound"
    )


def test_expired_session_is_not_found_and_the_reconnect_flow_creates_anew() -> None:
    w = World()
    w.clock.advance(3600 + 1)
    reply = w.send("restore_session", {"session_id": w.mine, "client_id": OWNER})
    assert reply["error_type"] == "SessionNotFound"
    assert reply["details"] == {"reason": "expired"}  # the caller proved ownership
    fresh = w.ok("create_session", client_id=OWNER)
    assert fresh["session_id"] != w.mine
    assert w.ok("restore_session", session_id=fresh["session_id"])["is_active"] is True


def test_session_limit_is_session_error() -> None:
    w = World()
    for _ in range(4):  # the default limit of 5, one used by the world
        w.ok("create_session", client_id=OWNER)
    assert error_of(w, "create_session", {"client_id": OWNER}) == "SessionError"


def test_deny_listed_client_is_session_error() -> None:
    w = World(Policy(rate_limit=None, deny_clients={"eve"}))
    assert error_of(w, "create_session", {"client_id": "eve"}) == "SessionError"


def test_foreign_and_unknown_replies_are_identical() -> None:
    w = World()
    for command, extra in [
        ("restore_session", {}),
        ("update_session_state", {"state_data": {"a": 1}}),
        ("close_session", {}),
        ("get_session_info", {}),
    ]:
        replies = [
            w.send(command, {"session_id": sid, "client_id": OWNER, **extra})
            for sid in (w.foreign, UNKNOWN, PHARO_ID)
        ]
        shown = [{k: v for k, v in r.items() if k not in ("id", "timestamp")} for r in replies]
        assert shown[0] == shown[1] == shown[2], shown
        assert shown[0]["error_code"] == "SessionNotFound"
        assert "details" not in shown[0]
    assert w.ok("get_session_info", session_id=w.foreign)["client_id"] == "someone-else"


# -- success cases ---------------------------------------------------------------------
def test_create_result_fields() -> None:
    result = World().ok("create_session", client_id="tui-desktop")
    assert set(result) >= CREATE_KEYS
    assert result["client_id"] == "tui-desktop"
    assert result["timeout"] == 3600 and result["is_active"] is True
    assert TIMESTAMP.match(result["created_at"])


def test_create_accepts_upstream_extras() -> None:
    result = World().ok(
        "create_session",
        client_id="tui-desktop",
        client_info={"platform": "linux", "version": "0.1", "capabilities": ["x"]},
        client_version="0.1.0",
        config={"auto_save": True},
    )
    assert set(result) >= CREATE_KEYS


def test_restore_result_fields() -> None:
    w = World()
    w.ok("update_session_state", session_id=w.mine, state_data={"workspace": "x := 3 + 4."})
    result = w.ok("restore_session", session_id=w.mine)
    assert set(result) >= RESTORE_KEYS
    assert result["session_state"] == {"workspace": "x := 3 + 4."}
    for key in ("workspace_context", "inspector_state", "object_registry"):
        assert isinstance(result[key], dict)


def test_restore_with_own_client_id() -> None:
    w = World()
    assert w.ok("restore_session", session_id=w.mine, client_id=OWNER)["client_id"] == OWNER


def test_update_result_fields() -> None:
    w = World()
    data = {"workspace": "x", "inspector": "open", "variables": ["x"], "n": 2**63 - 1}
    result = w.ok("update_session_state", session_id=w.mine, state_data=data)
    assert set(result) >= UPDATE_KEYS
    assert result["session_state"] == data and result["update_successful"] is True


def test_close_result_fields() -> None:
    w = World()
    result = w.ok("close_session", session_id=w.mine, save_state=True)
    assert result["session_id"] == w.mine and result["closed"] is True


def test_info_result_fields() -> None:
    w = World()
    result = w.ok("get_session_info", session_id=w.mine)
    assert set(result) >= INFO_KEYS
    assert isinstance(result["time_until_expiry"], int) and result["is_expired"] is False


def test_list_result_fields() -> None:
    w = World()
    result = w.ok("list_client_sessions", client_id=OWNER, client_token=w.client_token)
    assert result["client_id"] == OWNER and result["session_count"] == 1
    assert set(result["sessions"][0]) >= LIST_ITEM_KEYS
    assert "client_id" not in result["sessions"][0]


def test_list_of_a_client_without_sessions() -> None:
    w = World()
    # a stranger can not prove "nobody-yet" (issue 16); the application itself can list it
    assert w.send("list_client_sessions", {"client_id": "nobody-yet"})["status"] == "error"
    reply = w.handler.handle(
        {"id": "l", "command": "list_client_sessions", "parameters": {"client_id": "nobody-yet"}},
        caller=Caller.local(),
    )
    result = reply["result"]
    assert result["session_count"] == 0 and result["sessions"] == []


@pytest.mark.parametrize("parameters", [{}, None], ids=["empty_object", "no_member"])
def test_statistics_result_fields(parameters: dict[str, Any] | None) -> None:
    reply = World().send("get_session_statistics", parameters)
    assert reply["status"] == "success", reply
    result = reply["result"]
    assert set(result) >= STATS_KEYS
    assert all(isinstance(result[k], int) for k in STATS_KEYS)
    assert result["max_sessions_per_client"] == 5 and result["default_timeout"] == 3600

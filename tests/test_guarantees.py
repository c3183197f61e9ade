"""Guarantees of issue 14 that are finished: client ids and time policies."""

from __future__ import annotations

import sys
import unicodedata

import pytest

from stuisession import ManualClock, MemoryStore, Policy, ProtocolHandler
from stuisession.errors import ConfigurationError, ValidationError
from stuisession.ids import check_client_id
from stuisession.service.core import SessionService

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

"""The chunked pre-scan of large messages (issue 17, ``stuisession._jsonscan``).

What it protects: a message that breaks a parsing limit is refused from its bytes
in chunks, before it is decoded, so refusing it never holds the GIL for one long
C call; what the scan tells the parser equals what whole-text checks would say.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stuisession import _json, _jsonscan
from stuisession.bridge.replies import peek_fields
from stuisession.bridge.workers import SWITCH_INTERVAL, favour_short_requests
from stuisession.errors import InvalidRequest
from stuisession.policy import Policy
from stuisession.protocol.limits import parse_request_text

RAW = frozenset({"state_data"})


def _never_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(data: Any) -> str:
        raise AssertionError("a refused message was decoded")

    monkeypatch.setattr(_jsonscan, "decode_utf8", fail)


def _envelope(params_json: str) -> bytes:
    return ('{"id":"x","command":"update_session_state","parameters":' + params_json + "}").encode()


def test_a_long_number_outside_strings_is_refused_before_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _never_decoded(monkeypatch)
    body = _envelope('{"changes":[' + ",".join(["9" * 3900] * 300) + "]}")
    with pytest.raises(InvalidRequest) as err:
        parse_request_text(body, Policy(), RAW)
    assert err.value.details["limit"] == "max_int_digits"


def test_too_many_values_are_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    _never_decoded(monkeypatch)
    body = _envelope('{"changes":{' + ",".join(f'"k{i}":0' for i in range(600_000)) + "}}")
    with pytest.raises(InvalidRequest) as err:
        parse_request_text(memoryview(body), Policy(), RAW)  # zero-copy buffers too
    assert err.value.details["limit"] == "max_json_nodes"


def test_a_long_number_across_a_chunk_boundary_is_refused() -> None:
    prefix = '{"changes":{"pad":"' + "x" * (_jsonscan.CHUNK - 400) + '","n":'
    body = _envelope(prefix + "7" * 5000 + "}")
    with pytest.raises(_jsonscan.ScanRefusal):
        _jsonscan.scan(body, max_nodes=10**6, max_digits=640, run=300)


def test_a_long_digit_string_is_accepted() -> None:
    # digits inside a string are text, not a number: the scan must not refuse them
    body = _envelope('{"state_data":{"s":"' + "1" * 5000 + '"}}')
    parsed = parse_request_text(body, Policy(), RAW)
    assert parsed.value["parameters"]["state_data"]["s"] == "1" * 5000


def test_an_escaped_quote_does_not_hide_a_long_number() -> None:
    body = _envelope('{"changes":{"a":"say \\"hi\\" \\\\","n":' + "5" * 700 + "}}")
    with pytest.raises(InvalidRequest) as err:
        parse_request_text(body, Policy(), RAW)
    assert err.value.details["limit"] == "max_int_digits"


def test_invalid_utf8_is_still_a_clean_invalid_request() -> None:
    with pytest.raises(InvalidRequest, match="UTF-8"):
        parse_request_text(_envelope('{"s":"x"}') + b"\xff", Policy(), RAW)


_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**700), 10**700)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.sampled_from('ab1:{["\\\ud83d\u00e9e0'), max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(_values)
def test_scan_hints_match_whole_text_checks(value: Any) -> None:
    text = json.dumps({"v": value})
    data = text.encode()
    try:
        found = _jsonscan.scan(data, max_nodes=10**9, max_digits=640, run=300)
    except _jsonscan.ScanRefusal:
        # refused: the parser refuses it too
        with pytest.raises(_json.LimitExceeded):
            _json.loads_limited(text, _json.Limits())
        return
    assert found.nodes == _json.node_estimate(text)
    assert found.colons == text.count(":")
    numeric = data.translate(bytes.maketrans(b"123456789.", b"0" * 10))
    assert found.numbers == (b"0" * 300 in numeric or b"0e" in numeric or b"0E" in numeric)
    assert found.surrogate_escape == (_json._SURROGATE_ESCAPE.search(text) is not None)


def test_chunked_decoding_equals_bytes_decode() -> None:
    text = ("é€😀a" * (_jsonscan.CHUNK // 3)) + "end"
    data = text.encode()
    assert _jsonscan.decode_utf8(data) == text
    assert _jsonscan.decode_utf8(memoryview(data)) == text
    with pytest.raises(UnicodeDecodeError):
        _jsonscan.decode_utf8(data[:-4] + b"\xe2\x82")


def test_peek_reads_past_numbers_it_does_not_want_unconverted() -> None:
    # int() of a 5,000-digit literal is refused by CPython (and quadratic below that
    # bound): the routing peek must skip it, not convert it, and still find the session
    body = (
        '{"id":"x","command":"update_session_state","parameters":{"changes":['
        + "9" * 5000
        + '],"session_id":"s1"}}'
    ).encode()
    meta = peek_fields(body, ("id", "parameters"), nested={"parameters": ("session_id",)})
    assert meta["parameters"] == {"session_id": "s1"}


def test_serve_lets_waiting_threads_have_the_gil_sooner() -> None:
    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)  # CPython's default (an in-process serve may have run)
        favour_short_requests()
        assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL)
        assert SWITCH_INTERVAL < 0.005
    finally:
        sys.setswitchinterval(before)

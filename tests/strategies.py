"""Hypothesis strategies for sessions, records and plain JSON values.

Sizes are bounded so that property tests stay fast. Typed object graphs of
the schema-2 state come from :mod:`state_strategies`; this module adds plain
JSON values, client ids, session ids and whole :class:`Session` objects.
"""

from __future__ import annotations

import string
from typing import Any

import attrs
from hypothesis import strategies as st

from state_strategies import session_states as typed_session_states
from stuisession.ids import MAX_CLIENT_ID_LENGTH, SESSION_ID_PREFIX
from stuisession.state.model import Session, SessionInfo, SessionState, SessionStatus
from stuisession.state.schema import Metadata, Preferences, canonical

#: the characters of a base64url token (``secrets.token_urlsafe``)
BASE64URL = string.ascii_letters + string.digits + "-_"

#: any Unicode text that is valid UTF-8 (Hypothesis' default already leaves out surrogates)
unicode_text = st.text(st.characters(codec="utf-8"), max_size=24)

json_scalars: st.SearchStrategy[Any] = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.integers(min_value=-100, max_value=100)
    | st.floats(allow_nan=False, allow_infinity=False)
    | unicode_text
)


def json_values(max_leaves: int = 16) -> st.SearchStrategy[Any]:
    """Arbitrary JSON values: scalars, and lists and objects nested in any order."""
    return st.recursive(
        json_scalars,
        lambda inner: (
            st.lists(inner, max_size=6) | st.dictionaries(unicode_text, inner, max_size=6)
        ),
        max_leaves=max_leaves,
    )


def json_objects(max_size: int = 6) -> st.SearchStrategy[dict[str, Any]]:
    """JSON objects (the top level of ``session_state`` and other open fields)."""
    return st.dictionaries(unicode_text, json_values(10), max_size=max_size)


def large_json_objects() -> st.SearchStrategy[dict[str, Any]]:
    """Fewer, bigger objects: many keys and long strings (exercise compression)."""
    return st.dictionaries(
        st.text(string.ascii_lowercase, min_size=1, max_size=10),
        st.text(max_size=20).map(lambda t: t * 20) | st.just(list(range(50))),
        min_size=10,
        max_size=30,
    )


def session_ids() -> st.SearchStrategy[str]:
    """Well-formed session ids: ``session_`` and 43 base64url characters."""
    return st.text(BASE64URL, min_size=43, max_size=43).map(lambda t: SESSION_ID_PREFIX + t)


def client_ids() -> st.SearchStrategy[str]:
    """Acceptable client ids: 1-256 characters, no control characters, not blank."""
    chars = st.characters(codec="utf-8", exclude_categories=("Cc", "Cs"))
    return (
        st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._@:-]{0,40}", fullmatch=True)
        | st.text(chars, min_size=1, max_size=40).filter(lambda s: s.strip() != "")
        | st.text(chars, min_size=MAX_CLIENT_ID_LENGTH, max_size=MAX_CLIENT_ID_LENGTH).filter(
            lambda s: s.strip() != ""
        )
    )


def _extra_keys() -> st.SearchStrategy[str]:
    # open "extra" fields of typed records must not shadow a typed field's name
    return unicode_text.map(lambda k: "x-" + k)


@st.composite
def simple_session_states(draw: st.DrawFn) -> SessionState:
    """States with arbitrary JSON in every open field (no typed object graph)."""
    state = SessionState(
        session_state=draw(json_objects() | large_json_objects()),
        # the other open fields: small, rarely empty
        preferences=Preferences(
            theme=draw(st.none() | unicode_text),
            extra=draw(st.dictionaries(_extra_keys(), json_values(8), max_size=2)),
        ),
        metadata=Metadata(
            commands_run=draw(st.integers(0, 2**40)),
            client_info=draw(st.dictionaries(unicode_text, json_values(8), max_size=2)),
            extra=draw(st.dictionaries(_extra_keys(), json_values(8), max_size=2)),
        ),
        workspace_extra=draw(st.dictionaries(_extra_keys(), json_values(8), max_size=2)),
        inspector_extra=draw(st.dictionaries(_extra_keys(), json_values(8), max_size=2)),
    )
    return canonical(state)


def session_states() -> st.SearchStrategy[SessionState]:
    """Any state a client can build: empty, open JSON only, or a typed object graph."""
    return st.just(SessionState()) | simple_session_states() | typed_session_states()


timestamps = st.floats(min_value=0, max_value=4_102_444_800.0, allow_nan=False)  # up to 2100


@st.composite
def session_infos(draw: st.DrawFn) -> SessionInfo:
    """Valid session records: any status, consistent-looking timestamps."""
    created = draw(timestamps)
    accessed = created + draw(st.floats(0, 1e7))
    modified = created + draw(st.floats(0, 1e7))
    timeout = draw(st.integers(0, 10**7))
    absolute = draw(st.none() | st.floats(0, 1e8).map(lambda d: created + d))
    return SessionInfo(
        session_id=draw(session_ids()),
        client_id=draw(client_ids()),
        created_at=created,
        last_accessed=accessed,
        last_modified=modified,
        expires_at=accessed + timeout,
        timeout=timeout,
        revision=draw(st.integers(0, 2**53)),
        status=draw(st.sampled_from(SessionStatus)),
        absolute_expires_at=absolute,
        token_generation=draw(st.integers(0, 2**31)),
    )


@st.composite
def sessions(draw: st.DrawFn, states: st.SearchStrategy[SessionState] | None = None) -> Session:
    """Valid :class:`Session` objects with any status and state."""
    info = draw(session_infos())
    state = draw(session_states() if states is None else states)
    return Session(**attrs.asdict(info, recurse=False), state=state)

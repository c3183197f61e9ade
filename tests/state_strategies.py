"""Hypothesis strategies for the typed state model (schema 2): arbitrary object graphs.

Values are JSON literals or references into the registry, so generated states
contain shared references, cycles and self-references by construction.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from stuisession.state.refs import ref
from stuisession.state.schema import (
    Evaluation,
    Inspector,
    Metadata,
    ObjectRecord,
    Preferences,
    SessionState,
    ToolContext,
    Workspace,
    canonical,
)

names = st.text(min_size=1, max_size=12)
object_ids = st.from_regex(r"[A-Za-z0-9_.:@#-]{1,16}", fullmatch=True)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)


def json_values(leaves: st.SearchStrategy[Any] = json_scalars) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaves,
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(st.text(max_size=8).filter(lambda k: k != "$ref"), inner, max_size=4)
        ),
        max_leaves=12,
    )


def json_objects() -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.text(max_size=8), json_values(), max_size=5)


@st.composite
def session_states(draw: st.DrawFn, max_objects: int = 8) -> SessionState:
    ids = draw(st.lists(object_ids, unique=True, max_size=max_objects))
    leaves = json_scalars | st.sampled_from(ids).map(ref) if ids else json_scalars
    values = json_values(leaves)
    value_dicts = st.dictionaries(names, values, max_size=5)
    objects = {
        oid: draw(
            st.builds(
                ObjectRecord,
                class_name=st.text(max_size=12),
                print_string=st.text(max_size=30),
                serialized=st.none() | st.text(max_size=30),
                serialized_format=st.none() | st.just("ston"),
                slots=value_dicts,
                elements=st.lists(values, max_size=4),
                restorable=st.booleans(),
            )
        )
        for oid in ids
    }
    evaluations = st.builds(
        Evaluation,
        source=st.text(max_size=30),
        result=values,
        printed=st.none() | st.text(max_size=20),
        error=st.none() | st.text(max_size=20),
        timestamp=st.none() | st.just("2026-11-28T08:00:00Z"),
        duration_ms=st.none() | st.floats(min_value=0, max_value=1e6),
        mode=st.none() | st.sampled_from(["Execute", "Display"]),
    )
    workspaces = draw(
        st.dictionaries(
            names,
            st.builds(
                Workspace,
                variables=value_dicts,
                history=st.lists(evaluations, max_size=3),
                settings=json_objects(),
                contents=st.text(max_size=30),
            ),
            max_size=3,
        )
    )
    inspectors: dict[str, Inspector] = {}
    if ids:
        inspectors = draw(
            st.dictionaries(
                names,
                st.builds(
                    Inspector,
                    object_id=st.sampled_from(ids),
                    path=st.lists(st.text(max_size=6) | st.integers(0, 100), max_size=4),
                    selected=st.none() | st.text(max_size=6) | st.integers(0, 100),
                    scroll=st.integers(0, 10_000),
                    view=st.sampled_from(["raw", "items", "source"]),
                    pinned=st.booleans(),
                    title=st.none() | st.text(max_size=10),
                ),
                max_size=3,
            )
        )
    selected = draw(st.none() | st.sampled_from(sorted(inspectors))) if inspectors else None
    current = draw(st.sampled_from(sorted(workspaces))) if workspaces else "default"
    contexts = draw(
        st.dictionaries(
            names,
            st.builds(
                ToolContext,
                tool_type=st.sampled_from(["workspace", "inspector", "debugger"]),
                variables=value_dicts,
                data=json_objects(),
                saved_at=st.none() | st.just("2026-11-28T08:00:00Z"),
            ),
            max_size=2,
        )
    )
    state = SessionState(
        session_state=draw(json_objects()),
        workspaces=workspaces,
        current_workspace=current,
        objects=objects,
        inspectors=inspectors,
        selected_inspector=selected,
        preferences=draw(
            st.builds(
                Preferences,
                theme=st.none() | st.text(max_size=8),
                evaluation_mode=st.sampled_from(["Execute", "Display"]),
                history_limit=st.integers(0, 5000),
                extra=st.dictionaries(
                    st.text(min_size=1, max_size=8).map(lambda k: "x-" + k),
                    json_values(),
                    max_size=3,
                ),
            )
        ),
        metadata=draw(
            st.builds(
                Metadata,
                commands_run=st.integers(0, 10**6),
                client_info=json_objects(),
                extra=st.dictionaries(
                    st.text(min_size=1, max_size=8).map(lambda k: "x-" + k),
                    json_values(),
                    max_size=3,
                ),
            )
        ),
        contexts=contexts,
        workspace_extra=draw(
            st.dictionaries(
                st.text(min_size=1, max_size=8).map(lambda k: "x-" + k), json_values(), max_size=2
            )
        ),
    )
    return canonical(state)

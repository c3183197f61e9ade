"""The typed session state (schema version 2).

What a client gets back on restore, as attrs classes:

- :class:`Workspace` -- variables (name -> value), evaluation history,
  settings and the workspace text; several named workspaces per session.
- :class:`ObjectRecord` -- one object the Smalltalk side has shown the client,
  under a stable object id: class name, print string, an optional portable
  serialized form (e.g. STON) for re-materialising it, its slots and elements
  as values, and whether it can be restored.
- :class:`Inspector` -- an open inspector: the object it inspects, the
  navigation path, the selected item, scroll position, view and pinned flag.
- :class:`Preferences`, :class:`Metadata` -- typed where known, open otherwise.
- :class:`ToolContext` -- the context of one tool instance (``tool_id``).

Values are JSON literals or references (see :mod:`stuisession.refs`).

Two JSON forms exist. The *model form* (``to_model_dict``) mirrors these
classes; merge-patch updates address it. The *wire form* (``to_wire``) is what
is stored and what ``restore_session`` returns: its top-level keys are the
restore-result keys, with upstream's views (``workspace_context.variables``,
``inspector_state.selected_object``, ``object_registry`` id -> print string)
derived from the model and richer fields added beside them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs
import cattrs

from stuisession._json import check_json_value
from stuisession.errors import ValidationError
from stuisession.state.refs import check_object_id, is_ref, iter_refs

#: change-log records kept for "what changed since revision N" and auto-merges
MAX_CHANGE_RECORDS = 64


def _is_dict(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, dict):
        raise TypeError(f"{attribute.name} must be an object")


def _is_list(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, list):
        raise TypeError(f"{attribute.name} must be a list")


def _opt(t: type | tuple[type, ...]) -> Any:
    return attrs.validators.optional(attrs.validators.instance_of(t))


_str = attrs.validators.instance_of(str)
_int = attrs.validators.instance_of(int)
_bool = attrs.validators.instance_of(bool)


@attrs.frozen(kw_only=True)
class Evaluation:
    """One entry of a workspace's evaluation history."""

    source: str = attrs.field(validator=_str)
    #: the result as a value (often a reference to the registry), if kept
    result: Any = None
    #: the printed result (``printString``/displayIt text)
    printed: str | None = attrs.field(default=None, validator=_opt(str))
    #: the error message if the evaluation failed
    error: str | None = attrs.field(default=None, validator=_opt(str))
    #: ISO-8601 time of the evaluation
    timestamp: str | None = attrs.field(default=None, validator=_opt(str))
    duration_ms: float | None = attrs.field(default=None, validator=_opt((int, float)))
    #: upstream ``evaluation_mode``: "Execute" (doIt) or "Display" (displayIt)
    mode: str | None = attrs.field(default=None, validator=_opt(str))


@attrs.frozen(kw_only=True)
class Workspace:
    """A named workspace: variables, history, settings and its text."""

    variables: dict[str, Any] = attrs.field(factory=dict, validator=_is_dict)
    history: list[Evaluation] = attrs.field(factory=list, validator=_is_list)
    settings: dict[str, Any] = attrs.field(factory=dict, validator=_is_dict)
    contents: str = attrs.field(default="", validator=_str)


@attrs.frozen(kw_only=True)
class ObjectRecord:
    """An object in the registry, under its stable object id."""

    class_name: str = attrs.field(default="", validator=_str)
    print_string: str = attrs.field(default="", validator=_str)
    #: a portable form the Pharo side can re-materialise the object from
    serialized: str | None = attrs.field(default=None, validator=_opt(str))
    #: the format of ``serialized``, e.g. "ston"
    serialized_format: str | None = attrs.field(default=None, validator=_opt(str))
    slots: dict[str, Any] = attrs.field(factory=dict, validator=_is_dict)
    elements: list[Any] = attrs.field(factory=list, validator=_is_list)
    #: False when the host can not bring the object back (it returns as a placeholder)
    restorable: bool = attrs.field(default=True, validator=_bool)


@attrs.frozen(kw_only=True)
class Inspector:
    """An open inspector and everything needed to reopen it as it was."""

    object_id: str = attrs.field(validator=_str)
    #: navigation steps from the inspected object: slot names and element indexes
    path: list[str | int] = attrs.field(factory=list, validator=_is_list)
    selected: str | int | None = attrs.field(default=None, validator=_opt((str, int)))
    scroll: int = attrs.field(default=0, validator=_int)
    view: str = attrs.field(default="raw", validator=_str)
    pinned: bool = attrs.field(default=False, validator=_bool)
    title: str | None = attrs.field(default=None, validator=_opt(str))


@attrs.frozen(kw_only=True)
class Preferences:
    """User settings: the known ones typed, any others kept in ``extra``."""

    theme: str | None = attrs.field(default=None, validator=_opt(str))
    #: default evaluation mode ("Execute" = doIt, "Display" = displayIt)
    evaluation_mode: str = attrs.field(default="Execute", validator=_str)
    #: seconds between client auto-saves (upstream default 5 min)
    auto_save_interval: int = attrs.field(default=300, validator=_int)
    #: evaluation-history entries kept per workspace (oldest dropped first)
    history_limit: int = attrs.field(default=1000, validator=_int)
    extra: dict[str, Any] = attrs.field(factory=dict, validator=_is_dict)


@attrs.frozen(kw_only=True)
class Metadata:
    """Session metadata and counters (maintained by the server)."""

    commands_run: int = attrs.field(default=0, validator=_int)
    updates: int = attrs.field(default=0, validator=_int)
    evaluations: int = attrs.field(default=0, validator=_int)
    last_client_version: str | None = attrs.field(default=None, validator=_opt(str))
    client_info: dict[str, Any] = attrs.field(factory=dict, validator=_is_dict)
    extra: dict[str, Any] = attrs.field(factory=dict, validator=_is_dict)


@attrs.frozen(kw_only=True)
class ToolContext:
    """The context of one tool instance (workspace, inspector, debugger, ...)."""

    tool_type: str = attrs.field(default="workspace", validator=_str)
    variables: dict[str, Any] = attrs.field(factory=dict, validator=_is_dict)
    data: dict[str, Any] = attrs.field(factory=dict, validator=_is_dict)
    saved_at: str | None = attrs.field(default=None, validator=_opt(str))


@attrs.frozen(kw_only=True)
class ChangeRecord:
    """Which paths (in model form) one committed revision changed."""

    revision: int
    paths: list[list[str]] = attrs.field(factory=list)
    #: paths changed by appends (history), which commute with each other
    appends: list[list[str]] = attrs.field(factory=list)


@attrs.frozen(kw_only=True)
class SessionState:
    """Everything a client gets back on restore (schema version 2)."""

    #: the open JSON object of upstream ``state_data`` / ``session_state``
    session_state: dict[str, Any] = attrs.field(factory=dict, validator=_is_dict)
    workspaces: dict[str, Workspace] = attrs.field(factory=dict, validator=_is_dict)
    current_workspace: str = attrs.field(default="default", validator=_str)
    objects: dict[str, ObjectRecord] = attrs.field(factory=dict, validator=_is_dict)
    inspectors: dict[str, Inspector] = attrs.field(factory=dict, validator=_is_dict)
    selected_inspector: str | None = attrs.field(default=None, validator=_opt(str))
    preferences: Preferences = attrs.field(factory=Preferences)
    metadata: Metadata = attrs.field(factory=Metadata)
    contexts: dict[str, ToolContext] = attrs.field(factory=dict, validator=_is_dict)
    #: keys a client put in ``workspace_context`` / ``inspector_state`` beyond ours
    workspace_extra: dict[str, Any] = attrs.field(factory=dict, validator=_is_dict)
    inspector_extra: dict[str, Any] = attrs.field(factory=dict, validator=_is_dict)
    #: recent change log (newest last), for auto-merges and deltas
    changes: list[ChangeRecord] = attrs.field(factory=list, validator=_is_list)

    def stale_objects(self) -> list[str]:
        """Ids of objects the host marked non-restorable (they return as placeholders)."""
        return sorted(oid for oid, rec in self.objects.items() if not rec.restorable)


# -- converters ---------------------------------------------------------------------
converter = cattrs.Converter(forbid_extra_keys=True, omit_if_default=True)

_FLAT = (Preferences, Metadata)


def _flat_unstructure(obj: Preferences | Metadata) -> dict[str, Any]:
    out = {a.name: getattr(obj, a.name) for a in attrs.fields(type(obj)) if a.name != "extra"}
    out = {k: converter.unstructure(v) for k, v in out.items()}
    for k, v in obj.extra.items():
        if k not in out:
            out[k] = v
    return out


def _flat_structure(data: Any, cls: type[Any]) -> Any:
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__.lower()} must be an object")
    known = {a.name for a in attrs.fields(cls)} - {"extra"}
    kwargs = {k: v for k, v in data.items() if k in known}
    extra = {k: v for k, v in data.items() if k not in known}
    return cls(**kwargs, extra=extra)


for _cls in _FLAT:
    converter.register_unstructure_hook(_cls, _flat_unstructure)
    converter.register_structure_hook(_cls, _flat_structure)


def _structure_any(value: Any, _t: Any) -> Any:
    return value


def _structure_path_step(value: Any, _t: Any) -> str | int | None:
    if value is None and _t == (str | int | None):
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TypeError("path steps and selections must be slot names or indexes")
    return value


def _is_open_object(t: Any) -> bool:
    return bool(t == dict[str, Any])


# open JSON objects (variables, slots, session_state, ...) are JSON already:
# unstructuring hands them over as they are instead of walking every value
# (they are never mutated in place; updates copy along the paths they change)
converter.register_unstructure_hook_func(_is_open_object, lambda value: value)
converter.register_structure_hook(str | int, _structure_path_step)
converter.register_structure_hook(str | int | None, _structure_path_step)
converter.register_structure_hook(Any, _structure_any)
# strict scalars: cattrs would otherwise coerce 3 -> "3"
for _t in (str, int, float, bool):

    def _strict(value: Any, t: Any, _expected: type = _t) -> Any:
        if _expected is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not isinstance(value, _expected) or (_expected is int and isinstance(value, bool)):
            raise TypeError(f"expected {_expected.__name__}, got {type(value).__name__}")
        return value

    converter.register_structure_hook(_t, _strict)


def to_model_dict(state: SessionState) -> dict[str, Any]:
    """The model form of *state* (what merge-patch updates address)."""
    out: dict[str, Any] = converter.unstructure(state)
    return out


def from_model_dict(data: Any) -> SessionState:
    """Build a :class:`SessionState` from its model form; ``ValidationError`` if it doesn't fit."""
    try:
        return converter.structure(data, SessionState)
    except Exception as exc:  # cattrs groups several errors in one exception
        raise ValidationError(f"state does not fit the state model: {_describe(exc)}") from None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, cattrs.ClassValidationError):
        msgs = cattrs.transform_error(exc)
        return "; ".join(msgs[:5])
    return str(exc)


# -- wire form ------------------------------------------------------------------------
def to_wire(state: SessionState) -> dict[str, Any]:
    """The stored/restore form: upstream keys first, richer fields beside them.

    ``workspace_context.variables`` lists the current workspace's variable
    names and ``inspector_state.selected_object`` is the object of the selected
    inspector. A client that writes those upstream keys directly (no typed
    workspace / inspector) gets its own values back.
    """
    model = to_model_dict(state)
    current = state.workspaces.get(state.current_workspace)
    selected = state.inspectors.get(state.selected_inspector or "")
    wc_extra = model.get("workspace_extra", {})
    is_extra = model.get("inspector_extra", {})
    return {
        "session_state": model.get("session_state", {}),
        "workspace_context": {
            **wc_extra,
            "variables": sorted(current.variables) if current else wc_extra.get("variables", []),
            "current_workspace": state.current_workspace,
            "workspaces": model.get("workspaces", {}),
        },
        "inspector_state": {
            **is_extra,
            "selected_object": selected.object_id if selected else is_extra.get("selected_object"),
            "selected_inspector": state.selected_inspector,
            "inspectors": model.get("inspectors", {}),
        },
        "object_registry": {oid: rec.print_string for oid, rec in state.objects.items()},
        "objects": model.get("objects", {}),
        "stale_objects": state.stale_objects(),
        "preferences": model.get("preferences", {}),
        "metadata": model.get("metadata", {}),
        "contexts": model.get("contexts", {}),
        "changes": model.get("changes", []),
    }


def from_wire(data: dict[str, Any]) -> SessionState:
    """Inverse of :func:`to_wire` (derived views are recomputed, not read)."""
    wc = dict(data.get("workspace_context") or {})
    ins = dict(data.get("inspector_state") or {})
    workspaces = wc.pop("workspaces", {})
    current = wc.pop("current_workspace", "default")
    if isinstance(workspaces, dict) and current in workspaces:
        wc.pop("variables", None)
    elif wc.get("variables") == []:
        del wc["variables"]
    inspectors = ins.pop("inspectors", {})
    selected = ins.pop("selected_inspector", None)
    if selected is not None or ins.get("selected_object", 0) is None:
        ins.pop("selected_object", None)
    model = {
        "session_state": data.get("session_state", {}),
        "workspaces": workspaces,
        "current_workspace": current,
        "objects": data.get("objects", {}),
        "inspectors": inspectors,
        "selected_inspector": selected,
        "preferences": data.get("preferences", {}),
        "metadata": data.get("metadata", {}),
        "contexts": data.get("contexts", {}),
        "workspace_extra": wc,
        "inspector_extra": ins,
        "changes": data.get("changes", []),
    }
    return from_model_dict(model)


def canonical(state: SessionState) -> SessionState:
    """*state* with upstream-view keys that the typed model shadows removed.

    Makes ``from_wire(to_wire(s)) == s`` hold for every state a client can build.
    """
    wc, ins = state.workspace_extra, state.inspector_extra
    if "variables" in wc and (state.current_workspace in state.workspaces or wc["variables"] == []):
        wc = {k: v for k, v in wc.items() if k != "variables"}
    if "selected_object" in ins and (
        state.selected_inspector is not None or ins["selected_object"] is None
    ):
        ins = {k: v for k, v in ins.items() if k != "selected_object"}
    if "current_workspace" in wc or "workspaces" in wc:
        wc = {k: v for k, v in wc.items() if k not in ("current_workspace", "workspaces")}
    if "selected_inspector" in ins or "inspectors" in ins:
        ins = {k: v for k, v in ins.items() if k not in ("selected_inspector", "inspectors")}
    if wc is state.workspace_extra and ins is state.inspector_extra:
        return state
    return attrs.evolve(state, workspace_extra=wc, inspector_extra=ins)


# -- validation -------------------------------------------------------------------------
def _values(state: SessionState) -> Iterator[tuple[str, Any]]:
    for name, ws in state.workspaces.items():
        yield f"workspaces.{name}.variables", ws.variables
        for i, ev in enumerate(ws.history):
            yield f"workspaces.{name}.history[{i}].result", ev.result
    for oid, rec in state.objects.items():
        yield f"objects.{oid}.slots", rec.slots
        yield f"objects.{oid}.elements", rec.elements
    for tid, ctx in state.contexts.items():
        yield f"contexts.{tid}.variables", ctx.variables


def validate_state(state: SessionState, *, json_checked: frozenset[str] = frozenset()) -> None:
    """Check what the attrs validators can't: JSON-only values, ids, references.

    *json_checked* names open sections (``session_state``, ``workspace_extra``,
    ``inspector_extra``) whose values are known to be plain JSON already, so
    a large replaced ``session_state`` is not walked twice.

    Raises :class:`ValidationError` naming the first offending place.
    """
    for section, field in (
        ("session_state", "session_state"),
        ("workspace_extra", "workspace_context"),
        ("inspector_extra", "inspector_state"),
    ):
        if section not in json_checked:
            check_json_value(getattr(state, section), field)
    check_json_value(state.preferences.extra, "preferences")
    check_json_value(state.metadata.extra, "metadata")
    check_json_value(state.metadata.client_info, "metadata.client_info")
    for oid in state.objects:
        check_object_id(oid, "objects")
    for where, value in _values(state):
        check_json_value(value, where)
        for target in iter_refs(value):
            if target not in state.objects:
                raise ValidationError(
                    f"{where} refers to object {target[:128]!r}, which is not in the registry",
                    field=where,
                )
    for name, ws in state.workspaces.items():
        check_json_value(ws.settings, f"workspaces.{name}.settings")
    for iid, insp in state.inspectors.items():
        if insp.object_id not in state.objects:
            raise ValidationError(
                f"inspector {iid[:64]!r} inspects object {insp.object_id[:128]!r}, "
                "which is not in the registry",
                field=f"inspectors.{iid}",
            )
    if state.selected_inspector is not None and state.selected_inspector not in state.inspectors:
        raise ValidationError(
            "selected_inspector is not an open inspector", field="selected_inspector"
        )
    for tid, ctx in state.contexts.items():
        check_json_value(ctx.data, f"contexts.{tid}.data")


__all__ = [
    "ChangeRecord",
    "Evaluation",
    "Inspector",
    "Metadata",
    "ObjectRecord",
    "Preferences",
    "SessionState",
    "ToolContext",
    "Workspace",
    "from_model_dict",
    "from_wire",
    "is_ref",
    "to_model_dict",
    "to_wire",
    "validate_state",
]

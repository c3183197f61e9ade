"""Parameter validation: the named ``parameters`` of a request, checked and converted.

Every function raises :class:`~stuisession.errors.ValidationError` (upstream
``SessionError``) for a missing or malformed parameter, except :func:`session_id`, which
answers the one :func:`~stuisession.errors.session_not_found` reply for a string that is
not one of our ids.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stuisession import _json
from stuisession.errors import ValidationError
from stuisession.ids import check_client_id
from stuisession.security.identity import CURRENT_CALLER
from stuisession.service.core import Credentials, check_session_ref
from stuisession.state.updates import PATCHABLE, StateUpdate, structure_evaluations

Params = Mapping[str, Any]


class CheckedParams(dict[str, Any]):
    """Parameters whose values were validated as plain JSON while the request was parsed
    (:func:`stuisession._json.loads_request`), with the raw request text of some of them."""

    __slots__ = ("raw",)

    def __init__(self, values: Mapping[str, Any], *, raw: Mapping[str, bytes]) -> None:
        super().__init__(values)
        #: parameter name -> its UTF-8 JSON text exactly as the request held it
        self.raw = dict(raw)


def required_value(params: Params, name: str) -> Any:
    if name not in params or params[name] is None:
        raise ValidationError(f"{name} is required", field=name)
    return params[name]


def session_id(params: Params) -> str:
    # an id in another format answers SessionNotFound, like an unknown one
    return check_session_ref(required_value(params, "session_id"))


def client_id(params: Params) -> str:
    return check_client_id(required_value(params, "client_id"))


def optional_client_id(params: Params) -> str | None:
    value = params.get("client_id")
    return None if value is None else check_client_id(value)


def creds(params: Params) -> Credentials:
    return Credentials(
        client_id=optional_client_id(params),
        resume_token=optional_str(params, "resume_token"),
        client_token=optional_str(params, "client_token"),
        caller=CURRENT_CALLER.get(),
    )


def json_object(params: Params, name: str, *, required: bool = False) -> dict[str, Any] | None:
    if name not in params or params[name] is None:
        if required:
            raise ValidationError(f"{name} is required", field=name)
        return None
    value = params[name]
    if not isinstance(value, Mapping):
        raise ValidationError(f"{name} must be a JSON object", field=name)
    if type(params) is not CheckedParams:  # else checked in the parse already
        _json.check_json_value(value, name)
    return dict(value)


def optional_int(params: Params, name: str, minimum: int = 0) -> int | None:
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{name} must be an integer", field=name)
    if value < minimum:
        raise ValidationError(f"{name} must be at least {minimum}", field=name)
    return value


def optional_bool(params: Params, name: str, default: bool) -> bool:
    value = params.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ValidationError(f"{name} must be a boolean", field=name)
    return value


def optional_str(params: Params, name: str, max_length: int = 256) -> str | None:
    value = params.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > max_length or not encodable(value):
        raise ValidationError(
            f"{name} must be a UTF-8 string of 1-{max_length} characters", field=name
        )
    return value


def encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: valid JSON escapes, not UTF-8
        return False
    return True


def printable(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8")


def tool_id(params: Params, *, required: bool = True) -> str | None:
    if required:
        required_value(params, "tool_id")
    return optional_str(params, "tool_id", 128)


def upstream_sections(params: Params) -> dict[str, Any]:
    """Translate upstream-shaped section parameters into model-form patches.

    ``workspace_context`` and ``inspector_state`` are merged as their wire form;
    ``object_registry`` (id -> description) sets print strings.
    """
    patches: dict[str, Any] = {}
    wc = json_object(params, "workspace_context")
    if wc is not None:
        for key, value in wc.items():
            if key == "workspaces":
                patches["workspaces"] = value
            elif key == "current_workspace":
                patches["current_workspace"] = value
            else:
                patches.setdefault("workspace_extra", {})[key] = value
    ins = json_object(params, "inspector_state")
    if ins is not None:
        for key, value in ins.items():
            if key == "inspectors":
                patches["inspectors"] = value
            elif key == "selected_inspector":
                patches["selected_inspector"] = value
            else:
                patches.setdefault("inspector_extra", {})[key] = value
    registry = json_object(params, "object_registry")
    if registry is not None:
        objects: dict[str, Any] = {}
        for oid, desc in registry.items():
            if desc is not None and not isinstance(desc, str):
                raise ValidationError(
                    "object_registry must map object ids to description strings",
                    field="object_registry",
                )
            objects[oid] = None if desc is None else {"print_string": desc}
        patches["objects"] = objects
    return patches


def state_update(params: Params) -> StateUpdate:
    """The :class:`StateUpdate` an ``update_session_state`` request asks for.

    Raises :class:`ValidationError` (upstream ``SessionError``) for a malformed request.
    """
    patches: dict[str, Any] = {}
    replace: set[str] = set()
    state_data = json_object(params, "state_data")
    mode = params.get("mode", "replace")
    if mode not in ("replace", "merge"):
        raise ValidationError('mode must be "replace" or "merge"', field="mode")
    raw: dict[str, bytes] = {}
    if state_data is not None:
        patches["session_state"] = state_data
        if mode == "replace":
            replace.add("session_state")
        if type(params) is CheckedParams and "state_data" in params.raw:
            # stored and echoed as the client sent it: no second encoding
            raw["session_state"] = params.raw["state_data"]
    for section, patch in upstream_sections(params).items():
        patches[section] = patch
    changes = json_object(params, "changes")
    if changes is not None:
        for section, patch in changes.items():
            if section not in PATCHABLE:
                raise ValidationError(
                    f"changes has unknown section {section[:64]!r}; known: {', '.join(PATCHABLE)}",
                    field="changes",
                )
            if section in patches:
                raise ValidationError(f"section {section} is given twice", field="changes")
            patches[section] = patch
    appends: dict[str, Any] = {}
    if params.get("append_history") is not None:
        appends = structure_evaluations(params["append_history"], "append_history")
    if not patches and not appends:
        raise ValidationError("state_data is required", field="state_data")
    return StateUpdate(
        patches=patches,
        replace=frozenset(replace),
        append_history=appends,
        client_version=optional_str(params, "client_version"),
        values_checked=True,  # _object checked every patch above
        raw=raw,
    )

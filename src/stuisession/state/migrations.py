"""Schema migrations of the session state.

A migration is a function from the unstructured state (a JSON dict) of schema
version N to the one of version N+1. They are applied in a chain on load, so
a snapshot written by any earlier release still loads (the golden fixtures in
``tests/fixtures/`` check that). Never edit a published migration; add one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from stuisession.errors import IntegrityError
from stuisession.state.model import SCHEMA_VERSION

Migration = Callable[[dict[str, Any]], dict[str, Any]]

#: from_version -> function producing from_version + 1
MIGRATIONS: dict[int, Migration] = {}


def migration(from_version: int) -> Callable[[Migration], Migration]:
    """Register a migration from *from_version* to ``from_version + 1``."""

    def register(fn: Migration) -> Migration:
        if from_version in MIGRATIONS:
            raise ValueError(f"a migration from schema {from_version} is already registered")
        MIGRATIONS[from_version] = fn
        return fn

    return register


def migrate(
    data: dict[str, Any], from_version: int, to_version: int = SCHEMA_VERSION
) -> dict[str, Any]:
    """Apply the chain of migrations from *from_version* up to *to_version*."""
    if from_version > to_version:
        raise IntegrityError(
            f"snapshot schema version {from_version} is newer than this release "
            f"supports ({to_version}); upgrade stuisession",
            schema_version=from_version,
        )
    version = from_version
    while version < to_version:
        step = MIGRATIONS.get(version)
        if step is None:
            raise IntegrityError(f"no migration from schema version {version}")
        data = step(data)
        version += 1
    return data


# -- schema 1 -> 2 --------------------------------------------------------------------
_V2_PREF_TYPES: dict[str, tuple[type, ...]] = {
    "theme": (str, type(None)),
    "evaluation_mode": (str,),
    "auto_save_interval": (int,),
    "history_limit": (int,),
}


@migration(1)
def _schema_1_to_2(data: dict[str, Any]) -> dict[str, Any]:
    """Schema 1 kept upstream's shapes verbatim; schema 2 is the typed model (wire form).

    - ``object_registry`` id -> description becomes registry records with that
      print string, marked non-restorable (schema 1 had no serialized form);
    - ``workspace_context.variables`` (names) becomes the variables of a
      workspace (named by ``current_workspace``, else ``default``), bound to
      ``null`` (schema 1 kept no values);
    - ``inspector_state.selected_object`` becomes one selected inspector;
    - every other key is kept where the wire form shows it again.
    """
    from stuisession.state.refs import OBJECT_ID_RE

    registry = data.get("object_registry") or {}
    objects = {
        oid: {"class_name": "", "print_string": desc, "restorable": False}
        for oid, desc in registry.items()
        if isinstance(desc, str) and OBJECT_ID_RE.fullmatch(oid)
    }
    wc = dict(data.get("workspace_context") or {})
    names = wc.pop("variables", None)
    current = wc.pop("current_workspace", "default")
    if not isinstance(current, str):
        wc["v1.current_workspace"], current = current, "default"
    workspaces: dict[str, Any] = {}
    if isinstance(names, list) and names:
        workspaces[current] = {"variables": {n: None for n in names if isinstance(n, str)}}
    elif names is not None:
        wc["variables"] = names
    ins = dict(data.get("inspector_state") or {})
    inspectors: dict[str, Any] = {}
    selected = ins.get("selected_object")
    if isinstance(selected, str) and selected in objects:
        del ins["selected_object"]
        inspectors["inspector-1"] = {"object_id": selected}
    prefs = {}
    for key, value in (data.get("preferences") or {}).items():
        expected = _V2_PREF_TYPES.get(key)
        ok = expected is None or (isinstance(value, expected) and not isinstance(value, bool))
        prefs[key if ok else f"v1.{key}"] = value
    meta_v1 = dict(data.get("metadata") or {})
    metadata: dict[str, Any] = {}
    if isinstance(meta_v1.get("client_info"), dict):
        metadata["client_info"] = meta_v1.pop("client_info")
    if isinstance(meta_v1.get("client_version"), str):
        metadata["last_client_version"] = meta_v1.pop("client_version")
    metadata.update({f"v1.{k}" if k in _V2_META_KEYS else k: v for k, v in meta_v1.items()})
    return {
        "session_state": data.get("session_state") or {},
        "workspace_context": {**wc, "current_workspace": current, "workspaces": workspaces},
        "inspector_state": {
            **ins,
            "selected_inspector": "inspector-1" if inspectors else None,
            "inspectors": inspectors,
        },
        "objects": objects,
        "preferences": prefs,
        "metadata": metadata,
        "contexts": {},
        "changes": [],
    }


_V2_META_KEYS = frozenset(
    {"commands_run", "updates", "evaluations", "last_client_version", "client_info"}
)

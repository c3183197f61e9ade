

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
      ``default`` workspace, bound to ``null`` (schema 1 kept no values);
    - ``inspector_state.selected_object`` becomes one selected inspector;
    - every other key is kept where the wire form shows it again.
    """
    from .refs import OBJECT_ID_RE

    registry = data.get("object_registry") or {}
    objects = {
        oid: {"class_name": "", "print_string": desc, "restorable": False}
        for oid, desc in registry.items()
        if isinstance(desc, str) and OBJECT_ID_RE.fullmatch(oid)
    }
    wc = dict(data.get("workspace_context") or {})
    names = wc.pop("variables", None)
    workspaces: dict[str, Any] = {}
    if isinstance(names, list) and names:
        workspaces["default"] = {"variables": {n: None for n in names if isinstance(n, str)}}
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
        "workspace_context": {**wc, "current_workspace": "default", "workspaces": workspaces},
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

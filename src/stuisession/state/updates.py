"""State updates: merge patches per section, history appends, change paths.

An update is a set of RFC 7386 merge patches, one per section of the state's
*model form* (see :mod:`stuisession.state`), plus appends to evaluation
histories. Applying one yields the new state and the *paths* it touched; the
paths go into the state's change log, which drives two things:

- **auto-merge**: an update based on an older revision is applied anyway when
  none of the revisions since touched an overlapping path (appends to the same
  history commute, so they never conflict with each other);
- **deltas**: a reconnecting client that holds revision N can ask for the
  changes since N and gets "set this path to this value" operations.

A path is a list of keys from the section down. Paths are recorded down to
the leaves of a patch, but never more than :data:`MAX_PATHS_PER_UPDATE` of
them: a bigger patch records the coarser parent paths instead. Coarser paths
stay exact for deltas (the whole subtree is sent) and conservative for
conflicts.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import attrs
import cattrs

from stuisession import _json
from stuisession._json import MAX_DEPTH, check_json_value
from stuisession.errors import ValidationError
from stuisession.state.refs import check_object_id, is_ref, iter_refs
from stuisession.state.schema import (
    MAX_CHANGE_RECORDS,
    ChangeRecord,
    Evaluation,
    Inspector,
    Metadata,
    ObjectRecord,
    Preferences,
    SessionState,
    ToolContext,
    Workspace,
    canonical,
    converter,
    from_model_dict,
    to_model_dict,
    validate_state,
)

Path = tuple[str, ...]

#: sections of the model form a client may patch
PATCHABLE = (
    "session_state",
    "workspaces",
    "current_workspace",
    "objects",
    "inspectors",
    "selected_inspector",
    "preferences",
    "metadata",
    "contexts",
    "workspace_extra",
    "inspector_extra",
)
MAX_PATHS_PER_UPDATE = 256
MAX_PATH_DEPTH = 6
#: total paths kept over the whole change log
MAX_LOGGED_PATHS = 8192


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge recursively, ``null`` deletes a key."""
    if not isinstance(patch, Mapping):
        return patch
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def patch_paths(
    prefix: Path, patch: Any, target: Any, limit: int = MAX_PATHS_PER_UPDATE
) -> list[Path]:
    """The paths a merge patch of *target* touches, coarsened to stay within *limit*.

    A path only descends where both the patch and the target are objects (and
    the patch is not a reference), so "set the value at this path" reproduces
    the patch exactly.
    """
    if (
        not isinstance(patch, Mapping)
        or not isinstance(target, Mapping)
        or not patch
        or is_ref(patch)
        or len(prefix) >= MAX_PATH_DEPTH
    ):
        return [prefix]
    paths: list[Path] = []
    for key, value in patch.items():
        paths.extend(patch_paths((*prefix, str(key)), value, target.get(key), limit))
        if len(paths) > limit:
            return [prefix]
    return paths


def overlaps(a: Path, b: Path) -> bool:
    """True when one path is a prefix of the other (they touch the same data)."""
    n = min(len(a), len(b))
    return a[:n] == b[:n]


@attrs.frozen(kw_only=True)
class StateUpdate:
    """One client update, ready to apply to any revision of the state."""

    #: section -> merge patch (model form); ``session_state`` replaced when ``replace``
    patches: dict[str, Any] = attrs.field(factory=dict)
    #: sections replaced wholesale instead of merged
    replace: frozenset[str] = frozenset()
    #: (model path, value) pairs set with replace semantics (``None`` deletes)
    sets: tuple[tuple[Path, Any], ...] = ()
    #: workspace name -> evaluations to append to its history
    append_history: dict[str, list[Evaluation]] = attrs.field(factory=dict)
    client_version: str | None = None
    #: counts toward ``metadata.commands_run`` but not ``metadata.updates``
    counts_as_update: bool = True
    #: the caller has run :func:`~stuisession.jsonutil.check_json_value` over every
    #: patch already, so the open sections it patches need no second pass
    values_checked: bool = attrs.field(default=False, eq=False)
    #: section -> the UTF-8 JSON text of its patch as the client sent it (already
    #: validated): spliced into :meth:`to_json` instead of encoding the patch again
    raw: Mapping[str, bytes] = attrs.field(factory=dict, eq=False, repr=False)
    _json_cache: list[bytes] = attrs.field(factory=list, eq=False, repr=False, init=False)

    def to_json(self) -> bytes:
        """This update as JSON (what a journal record stores); encoded once."""
        if not self._json_cache:
            self._json_cache.append(self._encode())
        return self._json_cache[0]

    def _encode(self) -> bytes:
        patches: dict[str, Any] = self.patches
        if self.raw:
            patches = {
                k: _json.RawJSON(self.raw[k]) if k in self.raw else v for k, v in patches.items()
            }
        doc: dict[str, Any] = {"patches": patches}
        if self.replace:
            doc["replace"] = sorted(self.replace)
        if self.sets:
            doc["sets"] = [[list(path), value] for path, value in self.sets]
        if self.append_history:
            doc["append_history"] = {
                name: [converter.unstructure(e) for e in entries]
                for name, entries in self.append_history.items()
            }
        if self.client_version is not None:
            doc["client_version"] = self.client_version
        if not self.counts_as_update:
            doc["counts_as_update"] = False
        return _json.dumps_with_raw(doc) if self.raw else _json.dumps(doc)

    @classmethod
    def from_json(cls, data: bytes, *, checked: bool = False) -> StateUpdate:
        """The inverse of :meth:`to_json`; *checked*: *data* is a verified record our
        writer produced from checked values (its patches need no second check)."""
        doc = _json.loads(data)
        return cls(
            patches=doc["patches"],
            replace=frozenset(doc.get("replace", ())),
            sets=tuple((tuple(path), value) for path, value in doc.get("sets", ())),
            append_history={
                name: [converter.structure(e, Evaluation) for e in entries]
                for name, entries in doc.get("append_history", {}).items()
            },
            client_version=doc.get("client_version"),
            counts_as_update=doc.get("counts_as_update", True),
            values_checked=checked,
        )

    def paths(self, model: Mapping[str, Any]) -> list[Path]:
        """Paths this update sets or deletes when applied to *model* (the model form)."""
        out: list[Path] = []
        for section, patch in self.patches.items():
            if section in self.replace:
                out.append((section,))
            else:
                out.extend(patch_paths((section,), patch, model.get(section, _default(section))))
        out.extend(path for path, _ in self.sets)
        return out

    def appends(self) -> list[Path]:
        """Paths this update appends to."""
        return [("workspaces", name, "history") for name in self.append_history]

    def apply(self, state: SessionState, new_revision: int) -> SessionState:
        """The state with this update applied, validated, and logged as *new_revision*.

        Updates that only merge into existing parts take a fast path whose cost
        grows with the size of the patch, not of the state (see
        :func:`_apply_fast`); anything else -- and anything the fast path is
        unsure about -- goes through the full model round trip. Both give the
        same result.
        """
        fast = _apply_fast(self, state)
        if fast is not None:
            new, paths = fast
            return self._finish(state, new, paths, new_revision, validate=False)
        model = to_model_dict(state)
        paths = self.paths(model)
        for section, patch in self.patches.items():
            if patch is None:
                model.pop(section, None)  # null resets a section to its default
            elif section in self.replace:
                model[section] = patch
            else:
                model[section] = merge_patch(model.get(section, _default(section)), patch)
        for path, value in self.sets:
            _set_path(model, path, value)
        return self._finish(state, from_model_dict(model), paths, new_revision, validate=True)

    def _finish(
        self,
        state: SessionState,
        new: SessionState,
        paths: list[Path],
        new_revision: int,
        *,
        validate: bool,
    ) -> SessionState:
        """History appends, counters and the change log; then validation."""
        appended: list[Evaluation] = []
        if self.append_history:
            workspaces = dict(new.workspaces)
            limit = max(0, new.preferences.history_limit)
            for name, entries in self.append_history.items():
                ws = workspaces.get(name) or Workspace()
                history = [*ws.history, *entries]
                if len(history) > limit:
                    history = history[len(history) - limit :]
                workspaces[name] = attrs.evolve(ws, history=history)
                appended.extend(entries)
            new = attrs.evolve(new, workspaces=workspaces)
        meta = new.metadata
        new = attrs.evolve(
            new,
            metadata=attrs.evolve(
                meta,
                commands_run=meta.commands_run + 1,
                updates=meta.updates + (1 if self.counts_as_update else 0),
                evaluations=meta.evaluations + sum(len(e) for e in self.append_history.values()),
                last_client_version=self.client_version or meta.last_client_version,
            ),
            changes=_log(
                state.changes,
                ChangeRecord(
                    revision=new_revision,
                    paths=[list(p) for p in paths],
                    appends=[list(p) for p in self.appends()],
                ),
            ),
        )
        new = canonical(new)
        if validate:
            checked = frozenset(self.patches) if self.values_checked else frozenset()
            validate_state(new, json_checked=checked)
        elif not _appended_valid(appended, new):
            validate_state(new)
        elif new.selected_inspector is not None and new.selected_inspector not in new.inspectors:
            validate_state(new)  # raises, naming the problem
        return new


def _set_path(doc: dict[str, Any], path: Path, value: Any) -> None:
    for key in path[:-1]:
        child = doc.get(key)
        if not isinstance(child, dict):
            child = doc[key] = {}
        else:
            child = doc[key] = dict(child)  # never mutate the caller's nested dicts
        doc = child
    if value is None:
        doc.pop(path[-1], None)
    else:
        doc[path[-1]] = value


def _default(section: str) -> Any:
    return None if section in ("current_workspace", "selected_inspector") else {}


def _log(changes: Iterable[ChangeRecord], record: ChangeRecord) -> list[ChangeRecord]:
    log = [*changes, record]
    if len(log) > MAX_CHANGE_RECORDS:
        log = log[-MAX_CHANGE_RECORDS:]
    total = sum(len(c.paths) + len(c.appends) for c in log)
    while len(log) > 1 and total > MAX_LOGGED_PATHS:
        total -= len(log[0].paths) + len(log[0].appends)
        log.pop(0)
    return log


# -- the fast path -------------------------------------------------------------------------
class _Fallback(Exception):
    """The fast path can not (or will not) apply an update; use the full round trip."""


_RECORD_CLASSES: dict[str, type[Any]] = {
    "workspaces": Workspace,
    "objects": ObjectRecord,
    "inspectors": Inspector,
    "contexts": ToolContext,
}
#: fields holding open JSON objects (merged in place, values checked one key at a time)
_OPEN_FIELDS: dict[type[Any], dict[str, bool]] = {
    # field -> whether its values may hold references
    Workspace: {"variables": True, "settings": False},
    ObjectRecord: {"slots": True},
    Inspector: {},
    ToolContext: {"variables": True, "data": False},
}
_OPEN_SECTIONS = ("session_state", "workspace_extra", "inspector_extra")
_FLAT_SECTIONS = {"preferences": Preferences, "metadata": Metadata}
for _cls in _OPEN_FIELDS:
    attrs.resolve_types(_cls)


class _View(Mapping[str, Any]):
    """A read-only model-form view of an attrs record, built lazily.

    :func:`patch_paths` only asks "is this a mapping, and what is under this
    key?"; answering from the live objects keeps the cost proportional to the
    patch. Fields equal to their default are absent, as in the model form.
    """

    __slots__ = ("_obj",)

    def __init__(self, obj: Any) -> None:
        self._obj = obj

    def __getitem__(self, key: str) -> Any:
        field = attrs.fields_dict(type(self._obj)).get(key)
        if field is None:
            raise KeyError(key)
        value = getattr(self._obj, key)
        default: Any = field.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory()
        if value == default:
            raise KeyError(key)
        return _View(value) if attrs.has(type(value)) else value

    def __iter__(self) -> Iterator[str]:
        return (f.name for f in attrs.fields(type(self._obj)) if f.name in self)

    def __len__(self) -> int:
        return sum(1 for _ in self)


class _SectionView(Mapping[str, Any]):
    """A model-form view of a ``name -> record`` section."""

    __slots__ = ("_records",)

    def __init__(self, records: Mapping[str, Any]) -> None:
        self._records = records

    def __getitem__(self, key: str) -> Any:
        return _View(self._records[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self._records)

    def __len__(self) -> int:
        return len(self._records)


def _apply_fast(update: StateUpdate, state: SessionState) -> tuple[SessionState, list[Path]] | None:
    """Apply the merge patches of *update* touching only what they name, or None.

    Covers merges into the record sections (workspaces, objects, inspectors,
    contexts), the open sections and preferences/metadata -- the shape of
    nearly every client update. Anything else (replacements, ``sets``,
    deleting objects, which needs a whole-state reference check) returns None.
    Whatever the touched parts must satisfy is checked here; a failure also
    returns None, so the full path reports it with its usual message.
    """
    if update.sets or not update.replace <= frozenset(_OPEN_SECTIONS):
        return None
    try:
        changes: dict[str, Any] = {}
        paths: list[Path] = []
        touched: dict[str, dict[str, Any]] = {}
        for section, patch in update.patches.items():
            if section in update.replace:
                # upstream's save: state_data replaces session_state wholesale
                if type(patch) is not dict:
                    return None
                if not update.values_checked:
                    check_json_value(patch, section)
                paths.append((section,))
                changes[section] = dict(patch)
                continue
            if not isinstance(patch, Mapping) or not patch or is_ref(patch):
                return None
            if section in _RECORD_CLASSES:
                old = getattr(state, section)
                paths.extend(patch_paths((section,), patch, _SectionView(old)))
                changes[section], touched[section] = _merge_records(
                    old, patch, _RECORD_CLASSES[section], section
                )
            elif section in _OPEN_SECTIONS:
                value = getattr(state, section)
                paths.extend(patch_paths((section,), patch, value))
                if not update.values_checked:
                    check_json_value(patch, section)
                changes[section] = merge_patch(value, patch)
            elif section in _FLAT_SECTIONS:
                cls = _FLAT_SECTIONS[section]
                model = converter.unstructure(getattr(state, section))
                paths.extend(patch_paths((section,), patch, model))
                changes[section] = converter.structure(merge_patch(model, patch), cls)
            else:
                return None
        new = attrs.evolve(state, **changes)
        _check_touched(new, touched)
        return new, paths
    except (
        _Fallback,
        ValidationError,
        TypeError,
        ValueError,
        AttributeError,
        KeyError,
        cattrs.BaseValidationError,
    ):
        # the full path decides (and words any error); declining is always safe
        return None


def _merge_records(
    old: dict[str, Any], patch: Mapping[str, Any], cls: type[Any], section: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(new section, name -> the fields each touched record had patched)."""
    new = dict(old)  # a shallow copy: untouched records are shared, never mutated
    touched: dict[str, Any] = {}
    for key, sub in patch.items():
        if sub is None:
            if section == "objects":
                raise _Fallback  # references to it must be looked for everywhere
            new.pop(key, None)
            continue
        if not isinstance(sub, Mapping) or is_ref(sub):
            raise _Fallback
        if key in old:
            new[key] = _merge_record(old[key], sub, cls)
        else:
            new[key] = converter.structure(merge_patch(None, sub), cls)
        touched[key] = sub
    return new, touched


def _merge_record(obj: Any, patch: Mapping[str, Any], cls: type[Any]) -> Any:
    fields = attrs.fields_dict(cls)
    open_fields = _OPEN_FIELDS[cls]
    kw: dict[str, Any] = {}
    for name, sub in patch.items():
        field = fields.get(name)
        if field is None:
            raise _Fallback  # an unknown key: the full path reports it
        old = getattr(obj, name)
        if name in open_fields:
            if not isinstance(sub, Mapping):
                raise _Fallback
            kw[name] = merge_patch(old, sub)
        else:
            kw[name] = converter.structure(
                merge_patch(converter.unstructure(old), sub), field.type or Any
            )
    return attrs.evolve(obj, **kw)


def _values_valid(value: Any, refs: bool, objects: Mapping[str, Any], depth: int) -> bool:
    try:
        check_json_value(value, "value", MAX_DEPTH - depth)
    except ValidationError:
        return False
    return not refs or all(target in objects for target in iter_refs(value))


def _check_touched(state: SessionState, touched: dict[str, dict[str, Any]]) -> None:
    """What :func:`validate_state` checks, for the touched records only.

    Untouched records were valid before, and no object was deleted, so their
    references still resolve.
    """
    objects = state.objects
    for section, records in touched.items():
        cls = _RECORD_CLASSES[section]
        open_fields = _OPEN_FIELDS[cls]
        for key, sub in records.items():
            rec = getattr(state, section)[key]
            if section == "objects":
                check_object_id(key, "objects")
            for name in sub:
                if name not in attrs.fields_dict(cls):
                    continue  # a null for an unknown key of a new record: nothing was set
                value = getattr(rec, name)
                if name in open_fields:
                    # only the entries the patch named changed
                    for k in sub[name]:
                        if k in value and not _values_valid(
                            value[k], open_fields[name], objects, 1
                        ):
                            raise _Fallback
                elif name == "history":
                    if not all(_values_valid(ev.result, True, objects, 0) for ev in value):
                        raise _Fallback
                elif name == "elements" and not _values_valid(value, True, objects, 0):
                    raise _Fallback
            if section == "inspectors" and rec.object_id not in objects:
                raise _Fallback
    check_json_value(state.preferences.extra, "preferences")
    check_json_value(state.metadata.extra, "metadata")
    check_json_value(state.metadata.client_info, "metadata.client_info")


def _appended_valid(entries: list[Evaluation], state: SessionState) -> bool:
    return all(_values_valid(ev.result, True, state.objects, 0) for ev in entries)


def structure_evaluations(value: Any, field: str) -> dict[str, list[Evaluation]]:
    """Parse an ``append_history`` parameter: ``{workspace: [evaluation, ...]}``."""
    if not isinstance(value, Mapping):
        raise ValidationError(f"{field} must map workspace names to lists", field=field)
    out: dict[str, list[Evaluation]] = {}
    for name, entries in value.items():
        if not isinstance(entries, list):
            raise ValidationError(f"{field}.{name[:64]} must be a list", field=field)
        check_json_value(entries, field)
        try:
            out[name] = [converter.structure(e, Evaluation) for e in entries]
        except Exception:
            raise ValidationError(
                f"{field}.{name[:64]} entries must be evaluations "
                "({source, result?, printed?, error?, timestamp?, duration_ms?, mode?})",
                field=field,
            ) from None
    return out

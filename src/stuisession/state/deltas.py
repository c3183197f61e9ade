"""Deltas between revisions: the rebase check for ``base_revision`` updates and the
operations a restore with ``since_revision`` sends instead of the whole state.

Split out of :mod:`stuisession.state.updates` (which defines :class:`StateUpdate`).
"""

from __future__ import annotations

from typing import Any

from stuisession.errors import ConflictError
from stuisession.state.schema import SessionState, to_model_dict, to_wire
from stuisession.state.updates import MAX_PATH_DEPTH, Path, StateUpdate, overlaps


def check_rebase(
    state: SessionState, current_revision: int, update: StateUpdate, base: int
) -> None:
    """Allow an update based on revision *base* onto *current_revision*, or raise.

    Raises :class:`ConflictError` (with the current revision) when a revision
    after *base* touched data this update also touches, or when the change log
    no longer reaches back to *base*.
    """
    if base == current_revision:
        return
    if base > current_revision:
        raise ConflictError(
            "base_revision is newer than the session", current_revision=current_revision
        )
    since = [c for c in state.changes if c.revision > base]
    if not since or since[0].revision != base + 1 or since[-1].revision != current_revision:
        raise ConflictError(
            "Session changed since base_revision and the changes are no longer known",
            current_revision=current_revision,
        )
    mine = update.paths(to_model_dict(state))
    my_appends = update.appends()
    for record in since:
        theirs = [tuple(p) for p in record.paths]
        their_appends = [tuple(p) for p in record.appends]
        for p in mine:
            if any(overlaps(p, q) for q in theirs + their_appends):
                raise ConflictError(
                    "Session was changed at " + "/".join(p[:3]) + " since base_revision",
                    current_revision=current_revision,
                    path=list(p[:MAX_PATH_DEPTH]),
                )
        for p in my_appends:
            if any(overlaps(p, q) for q in theirs):
                raise ConflictError(
                    "Session was changed at " + "/".join(p[:3]) + " since base_revision",
                    current_revision=current_revision,
                    path=list(p),
                )


def _wire_paths(path: Path) -> list[Path]:
    """Where a model-form path shows up in the wire form (with derived views)."""
    section, rest = path[0], path[1:]
    if section == "workspaces":
        return [("workspace_context", "workspaces", *rest), ("workspace_context", "variables")]
    if section == "current_workspace":
        return [("workspace_context", "current_workspace"), ("workspace_context", "variables")]
    if section == "objects":
        out: list[Path] = [("objects", *rest), ("stale_objects",)]
        out.append(("object_registry", rest[0]) if rest else ("object_registry",))
        return out
    if section == "inspectors":
        return [("inspector_state", "inspectors", *rest), ("inspector_state", "selected_object")]
    if section == "selected_inspector":
        return [("inspector_state", "selected_inspector"), ("inspector_state", "selected_object")]
    if section == "workspace_extra":
        return [("workspace_context", *rest)] if rest else [("workspace_context",)]
    if section == "inspector_extra":
        return [("inspector_state", *rest)] if rest else [("inspector_state",)]
    if section in _WHOLE_SECTIONS:
        return [(section,)]
    return [path]


#: sections whose wire form is ``{}`` while every field has its default and lists every
#: field otherwise: a change to one field must send the section whole (they are small)
_WHOLE_SECTIONS = frozenset({"preferences", "metadata"})


_MISSING = object()


def _get(doc: Any, path: Path) -> Any:
    for key in path:
        if not isinstance(doc, dict) or key not in doc:
            return _MISSING
        doc = doc[key]
    return doc


def changes_since(
    state: SessionState, current_revision: int, since: int
) -> list[dict[str, Any]] | None:
    """Operations that bring a client from revision *since* to *current_revision*.

    Each is ``{"path": [...], "value": v}`` (set, replacing what is there) or
    ``{"path": [...], "delete": true}``, over the wire form. ``None`` when the
    change log no longer reaches back to *since* (the client needs a full restore).
    """
    if since >= current_revision:
        return []
    records = [c for c in state.changes if c.revision > since]
    if not records or records[0].revision != since + 1:
        return None
    # every committed change bumps the metadata counters (commands_run, updates, ...)
    wanted: set[Path] = {("metadata",)}
    for record in records:
        for logged in [*record.paths, *record.appends]:
            wanted.update(_wire_paths(tuple(logged)))
    # a path under another wanted path is covered by the parent's value
    ordered = sorted(wanted, key=len)
    kept: list[Path] = []
    for path in ordered:
        if not any(overlaps(path, q) and len(q) < len(path) for q in kept):
            kept.append(path)
    wire = to_wire(state)
    ops: list[dict[str, Any]] = []
    for path in sorted(kept):
        value = _get(wire, path)
        if value is _MISSING:
            # a record field back at its default is omitted, with its parent when that
            # is left empty: delete the outermost vanished ancestor too
            gone = path
            while len(gone) > 1 and _get(wire, gone[:-1]) is _MISSING:
                gone = gone[:-1]
            ops.append({"path": list(gone), "delete": True})
        else:
            ops.append({"path": list(path), "value": value})
    return ops


__all__ = ["changes_since", "check_rebase"]

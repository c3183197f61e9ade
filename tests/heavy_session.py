"""A realistic heavy session (issue 4): 5,000 variables, 5,000 objects with
references, 50 inspectors and 1,000 history entries. Deterministic."""

from __future__ import annotations

import random
from typing import Any

CLASSES = ["Point", "OrderedCollection", "Dictionary", "Association", "String", "Morph", "Set"]


def heavy_changes(
    variables: int = 5000,
    objects: int = 5000,
    inspectors: int = 50,
    history: int = 1000,
    seed: int = 7,
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """(``changes`` for update_session_state, ``append_history``) building the heavy state."""
    rnd = random.Random(seed)
    ids = [f"obj_{i}" for i in range(objects)]
    objs: dict[str, Any] = {}
    for i, oid in enumerate(ids):
        cls = CLASSES[i % len(CLASSES)]
        slots: dict[str, Any] = {"index": i, "label": f"item {i}"}
        # references: to a neighbour (chains), to a random object (shared refs), cycles
        slots["next"] = {"$ref": ids[(i + 1) % objects]}
        slots["other"] = {"$ref": ids[rnd.randrange(objects)]}
        rec: dict[str, Any] = {
            "class_name": cls,
            "print_string": f"a {cls}({i})",
            "slots": slots,
        }
        if i % 10 == 0:
            rec["elements"] = [{"$ref": ids[(i + k) % objects]} for k in range(1, 4)] + [i, "x"]
        if i % 3 == 0:
            rec["serialized"] = f"{cls}{{#index:{i}}}"
            rec["serialized_format"] = "ston"
        if i % 97 == 0:
            rec["restorable"] = False
        objs[oid] = rec
    variables_map: dict[str, Any] = {}
    for i in range(variables):
        variables_map[f"var{i}"] = {"$ref": ids[rnd.randrange(objects)]} if i % 4 else i * 1.5
    inspectors_map = {
        f"insp-{i}": {
            "object_id": ids[(i * 37) % objects],
            "path": ["next", "other", i % 5],
            "selected": "label",
            "scroll": i * 3,
            "view": "raw" if i % 2 else "items",
            "pinned": i % 7 == 0,
        }
        for i in range(inspectors)
    }
    changes = {
        "objects": objs,
        "workspaces": {
            "default": {"variables": variables_map, "contents": "Transcript show: 'hi'."}
        },
        "inspectors": inspectors_map,
        "selected_inspector": "insp-0",
        "preferences": {"theme": "dark", "history_limit": max(1000, history)},
    }
    evaluations = [
        {
            "source": f"var{i % variables} := {CLASSES[i % len(CLASSES)]} new",
            "result": {"$ref": ids[i % objects]},
            "printed": f"a {CLASSES[i % len(CLASSES)]}",
            "timestamp": "2026-11-28T08:00:00Z",
            "duration_ms": float(i % 50),
        }
        for i in range(history)
    ]
    return changes, {"default": evaluations}

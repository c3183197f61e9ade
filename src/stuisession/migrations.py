"""Schema migrations of the session state.

A migration is a function from the unstructured state (a JSON dict) of schema
version N to the one of version N+1. They are applied in a chain on load, so
a snapshot written by any earlier release still loads (the golden fixtures in
``tests/fixtures/`` check that). Never edit a published migration; add one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import IntegrityError
from .model import SCHEMA_VERSION

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

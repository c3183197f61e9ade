"""Every public name is importable and exported exactly once (in the style of trio's
``test_exports.py``).

"Exactly once" means: across the ``__all__`` of the foundation modules and of each
subpackage, a name appears in one place only, and that place is the object's home (the
module it is defined in belongs to it). Re-exports are allowed only in the places listed
in ``REEXPORTERS`` (the top-level package and compatibility shims).
"""

from __future__ import annotations

import importlib
import inspect
from collections import defaultdict

import pytest

import stuisession

#: modules whose ``__all__`` defines the public API, one home per name
HOMES = [
    "stuisession.errors",
    "stuisession.clock",
    "stuisession.ids",
    "stuisession.keys",
    "stuisession.policy",
    "stuisession.config",
    "stuisession.replies",
    "stuisession.state",
    "stuisession.codec",
    "stuisession.stores",
    "stuisession.security",
    "stuisession.service",
    "stuisession.protocol",
    "stuisession.bridge",
    "stuisession.client",
    "stuisession.admin",
    "stuisession.cli",
]
#: modules that only re-export names whose home is elsewhere
REEXPORTERS = ["stuisession", "stuisession.server"]
#: import paths that must keep working (compatibility)
COMPAT_PATHS = [
    ("stuisession.stores", "RedisStore"),
    ("stuisession.client", "SessionClient"),
    ("stuisession.server", "BridgeServer"),
    ("stuisession.clock", "ManualClock"),
]


#: homes owned by other work in progress that have no ``__all__`` yet: their public names
#: are the classes and functions they define
WITHOUT_ALL = {"stuisession.keys", "stuisession.client"}


def _public(module_name: str) -> list[str]:
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None)
    if names is None and module_name in WITHOUT_ALL:
        return [
            n
            for n, o in vars(module).items()
            if not n.startswith("_")
            and (inspect.isclass(o) or inspect.isfunction(o))
            and o.__module__ == module_name
        ]
    assert names is not None, f"{module_name} has no __all__"
    return list(names)


@pytest.mark.parametrize("module_name", HOMES + REEXPORTERS)
def test_every_name_in_all_is_importable(module_name: str) -> None:
    module = importlib.import_module(module_name)
    for name in _public(module_name):
        assert hasattr(module, name), f"{module_name}.{name} is in __all__ but missing"


def test_each_public_name_has_one_home() -> None:
    where: dict[str, list[str]] = defaultdict(list)
    for module_name in HOMES:
        for name in _public(module_name):
            where[name].append(module_name)
    twice = {name: homes for name, homes in where.items() if len(homes) > 1}
    assert twice == {}


@pytest.mark.parametrize("module_name", HOMES)
def test_a_home_defines_what_it_exports(module_name: str) -> None:
    module = importlib.import_module(module_name)
    for name in _public(module_name):
        obj = getattr(module, name)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue  # constants carry no home of their own
        defined_in = obj.__module__
        assert defined_in == module_name or defined_in.startswith(module_name + "."), (
            f"{module_name} exports {name}, defined in {defined_in}"
        )


@pytest.mark.parametrize("module_name", REEXPORTERS)
def test_reexports_point_at_a_home(module_name: str) -> None:
    homes = {n: m for m in HOMES for n in _public(m)}
    module = importlib.import_module(module_name)
    for name in _public(module_name):
        if name.startswith("__"):
            continue
        assert name in homes, f"{module_name}.{name} is re-exported but has no home"
        home = importlib.import_module(homes[name])
        assert getattr(module, name) is getattr(home, name)


def test_top_level_names_stay_importable() -> None:
    for name in stuisession.__all__:
        exec(f"from stuisession import {name}", {})


@pytest.mark.parametrize(("module_name", "name"), COMPAT_PATHS)
def test_compatibility_paths(module_name: str, name: str) -> None:
    assert inspect.isclass(getattr(importlib.import_module(module_name), name))

"""The public surface of ``stuisession``: names, docstrings, typing marker, version."""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

import stuisession

PUBLIC = list(stuisession.__all__)


def _ruff_sort_key(name: str) -> tuple[int, str]:
    """ruff RUF022's "isort-style" order: CONSTANTS, then Classes, then the rest."""
    if name.isupper():
        return (0, name)
    if name[:1].isupper():
        return (1, name)
    return (2, name)


def _public_objects() -> list[tuple[str, Any]]:
    return [
        (name, getattr(stuisession, name))
        for name in PUBLIC
        if inspect.isclass(getattr(stuisession, name))
        or inspect.isfunction(getattr(stuisession, name))
    ]


def test_all_is_a_list_of_strings() -> None:
    assert isinstance(stuisession.__all__, (list, tuple))
    assert all(isinstance(name, str) and name for name in PUBLIC)


@pytest.mark.parametrize("name", PUBLIC)
def test_every_name_in_all_exists(name: str) -> None:
    assert hasattr(stuisession, name), name
    assert getattr(stuisession, name) is not None


def test_all_is_unique() -> None:
    assert len(PUBLIC) == len(set(PUBLIC))


def test_all_is_sorted() -> None:
    assert sorted(PUBLIC, key=_ruff_sort_key) == PUBLIC


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, Any] = {}
    exec("from stuisession import *", namespace)
    namespace.pop("__builtins__", None)
    assert set(namespace) == set(PUBLIC)


def test_public_names_are_not_private_modules() -> None:
    for name in PUBLIC:
        obj = getattr(stuisession, name)
        assert not inspect.ismodule(obj), name
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__module__.startswith("stuisession"), (name, obj.__module__)


def test_core_classes_are_exported() -> None:
    for name in ("ProtocolHandler", "MemoryStore", "Policy", "ManualClock", "SessionService"):
        assert name in PUBLIC


@pytest.mark.parametrize(("name", "obj"), _public_objects(), ids=lambda v: str(v)[:40])
def test_public_classes_and_functions_have_docstrings(name: str, obj: Any) -> None:
    doc = obj.__doc__  # its own docstring, not one inherited from a base class
    assert isinstance(doc, str) and doc.strip(), f"{name} has no docstring"


def _undocumented_methods() -> list[str]:
    missing = []
    for name, cls in _public_objects():
        if not inspect.isclass(cls):
            continue
        for attr, value in vars(cls).items():
            if attr.startswith("_"):
                continue
            func = value
            if isinstance(func, (staticmethod, classmethod)):
                func = func.__func__
            elif isinstance(func, property):
                func = func.fget
            if not inspect.isfunction(func):
                continue
            # an override may inherit its base's docstring
            if not inspect.getdoc(getattr(cls, attr)):
                missing.append(f"{name}.{attr}")
    return missing


def test_public_methods_have_docstrings() -> None:
    assert _undocumented_methods() == []


def test_the_package_is_documented() -> None:
    assert stuisession.__doc__ and stuisession.__doc__.strip()


def test_py_typed_ships_in_the_package() -> None:
    marker = importlib.resources.files("stuisession") / "py.typed"
    assert marker.is_file()
    assert (Path(stuisession.__file__).parent / "py.typed").is_file()


def test_py_typed_is_declared_as_package_data() -> None:
    """A wheel only ships py.typed if the build is told to include it."""
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    if not pyproject.is_file():  # pragma: no cover - running from an installed copy
        pytest.skip("no source tree")
    import tomllib

    config = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    package_data = config["tool"]["setuptools"]["package-data"]["stuisession"]
    assert "py.typed" in package_data


def test_version_matches_the_package_metadata() -> None:
    assert stuisession.__version__ == importlib.metadata.version("stuisession")


def test_version_is_pep440() -> None:
    assert re.fullmatch(
        r"\d+(\.\d+)*((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?(\+[a-z0-9.]+)?",
        stuisession.__version__,
    )


def test_version_is_exported() -> None:
    assert "__version__" in PUBLIC

"""The layer rules that import-linter cannot express: a subpackage's private modules.

A module whose name starts with ``_`` inside a subpackage (e.g. ``stuisession.codec._envelope``)
may be imported only by modules of that same subpackage. The layer contracts themselves live in
``[tool.importlinter]`` (``make lint`` runs ``lint-imports``); this test runs them too.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PKG = SRC / "stuisession"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
            found.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _private_owner(target: str) -> str | None:
    """The subpackage that owns *target* when *target* is (inside) a private module of it."""
    parts = target.split(".")
    for i in range(1, len(parts)):
        if parts[i].startswith("_") and not parts[i].startswith("__"):
            module = SRC.joinpath(*parts[: i + 1])
            if module.with_suffix(".py").exists() or module.is_dir():
                return ".".join(parts[:i])
            return None  # a private name inside a public module: ruff's concern
    return None


def private_import_violations() -> list[str]:
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        importer = _module_name(path)
        for target in _imports(path):
            owner = _private_owner(target)
            if owner is None or owner == "stuisession":
                continue  # top-level private modules (_json, _fs) are foundation helpers
            if importer != owner and not importer.startswith(owner + "."):
                bad.append(f"{importer} imports {target}")
    return bad


def test_no_module_imports_another_subpackages_private_modules() -> None:
    assert private_import_violations() == []


def test_the_private_module_check_can_fail() -> None:
    assert _private_owner("stuisession.codec._envelope") == "stuisession.codec"
    assert _private_owner("stuisession.codec._envelope.decompress") == "stuisession.codec"
    assert _private_owner("stuisession._json") == "stuisession"
    assert _private_owner("stuisession.codec.snapshot") is None
    assert _private_owner("stuisession.bridge.replies._peek_result") is None


def test_import_contracts_hold() -> None:
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint is not None, "import-linter is a dev dependency: pip install -e '.[dev]'"
    done = subprocess.run([lint], capture_output=True, text=True, cwd=SRC.parent, check=False)
    assert done.returncode == 0, done.stdout + done.stderr

"""Every code block marked ``<!-- runnable -->`` in the docs and the README runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARKED = re.compile(r"<!-- runnable -->\s*```python\n(.*?)```", re.S)


def snippets() -> list[tuple[str, str]]:
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for i, code in enumerate(MARKED.findall(path.read_text())):
            found.append((f"{path.name}#{i}", code))
    return found


def test_there_are_runnable_snippets() -> None:
    assert len(snippets()) >= 3


@pytest.mark.parametrize(("where", "code"), snippets(), ids=[w for w, _ in snippets()])
def test_snippet_runs(
    where: str, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # snippets create ./sessions etc. in a scratch directory
    exec(compile(code, where, "exec"), {"__name__": "__snippet__"})

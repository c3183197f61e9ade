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


def active_sessions(root: Path) -> int:
    """Active sessions in every file store a snippet left under *root*."""
    from stuisession import FileStore, ProtocolHandler

    total = 0
    for keyring in root.rglob("keyring.json"):
        handler = ProtocolHandler(FileStore(keyring.parent, fsync=False))
        try:
            reply = handler.handle({"id": "s", "command": "get_session_statistics"})
            total += int(reply["result"]["active_sessions"])
        finally:
            handler.store.close()
    return total


@pytest.mark.parametrize(("where", "code"), snippets(), ids=[w for w, _ in snippets()])
def test_snippets_run_twice(
    where: str, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # snippets create ./sessions etc. in a scratch directory
    # twice in the same directory, as a reader re-running it would: a snippet cleans up
    for _ in range(2):
        exec(compile(code, where, "exec"), {"__name__": "__snippet__"})
        assert active_sessions(tmp_path) == 0, f"{where} left an active session behind"

"""What a newcomer meets first (issue 20): docs that stand alone and a site that browses
from disk, rendered API cross-references, and a checkout that ignores what the quickstart
creates."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def doc_texts() -> dict[str, str]:
    pages = {p.name: p.read_text(encoding="utf-8") for p in DOCS.glob("*.md")}
    pages["README.md"] = (ROOT / "README.md").read_text(encoding="utf-8")
    return pages


def test_docs_reference_no_file_outside_the_repo() -> None:
    for name, text in doc_texts().items():
        assert "shared/" not in text, name
        assert "stui-protocol.md" not in text, name


def test_docs_do_not_promise_unwired_features() -> None:
    for name, text in doc_texts().items():
        assert "once wired" not in text, name


def test_site_links_work_from_disk_and_there_is_a_way_to_view_it() -> None:
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    assert re.search(r"^use_directory_urls: false$", config, re.M)
    assert "viewing-docs.md" in config
    assert "docs-serve:" in (ROOT / "Makefile").read_text(encoding="utf-8")


def test_changelog_page_includes_the_changelog() -> None:
    page = (DOCS / "changelog.md").read_text(encoding="utf-8")
    assert '--8<-- "CHANGELOG.md"' in page
    assert "pymdownx.snippets" in (ROOT / "mkdocs.yml").read_text(encoding="utf-8")


def test_sphinx_roles_become_cross_references() -> None:
    spec = importlib.util.spec_from_file_location("sphinx_roles", DOCS / "_ext" / "sphinx_roles.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = "Logs to :class:`~stuisession.security.audit.AuditLog`; see :meth:`Policy.strict`."
    out = module.convert(text)
    assert ":class:" not in out and ":meth:" not in out
    assert (
        '<autoref identifier="stuisession.security.audit.AuditLog" optional>'
        "<code>AuditLog</code></autoref>"
    ) in out
    assert (
        '<autoref identifier="Policy.strict" optional><code>Policy.strict</code></autoref>' in out
    )


def test_gitignore_covers_what_the_quickstart_creates() -> None:
    git = shutil.which("git")
    assert git is not None
    created = [
        "sessions/keyring.json",
        "sessions/sessions/ab/x.snap",
        "s.json",
        ".stuisession/keyring.json",
    ]
    proc = subprocess.run(
        [git, "-C", str(ROOT), "check-ignore", "--no-index", *created],
        capture_output=True,
        text=True,
        check=False,
    )
    assert sorted(proc.stdout.split()) == sorted(created), proc.stdout + proc.stderr


def test_readme_install_lines_work_without_pypi() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    first_block = readme.split("```")[1]
    assert first_block.splitlines()[1].startswith("make run")
    assert first_block.splitlines()[2].startswith("make test")
    # the package is not published: no line installs it by name from an index
    assert not re.search(r"pip install '?stuisession\[", readme)
    assert "pip install -e '.[zmq]'" in readme
    assert "make dist" in readme and "dist/*.whl" in readme
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^dist:", makefile, re.M)
    assert re.search(r"^run: \$\(RUN_STAMP\)$", makefile, re.M)  # serving installs .[zmq] only
    assert "pip install -q -e '.[zmq]'" in makefile

"""A griffe extension for the API page: Sphinx roles in docstrings become cross-references.

The docstrings use reST roles (``:class:`~stuisession.security.audit.AuditLog```),
which mkdocstrings would print raw. Each role becomes an *optional* autoref: a link
when the target is on the site, plain code otherwise (never a broken link, so the
strict build stays strict about everything else). ``~`` shows only the last name.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj|const):`(~?)([^`<>]+?)`")


def _replace(match: re.Match[str]) -> str:
    tilde, target = match.group(1), match.group(2).strip()
    target = target.removesuffix("()")
    shown = target.rsplit(".", 1)[-1] if tilde else target
    return f'<autoref identifier="{target}" optional><code>{shown}</code></autoref>'


def convert(text: str) -> str:
    """*text* with every Sphinx role replaced by an optional autoref."""
    return ROLE.sub(_replace, text)


class SphinxRoles(griffe.Extension):
    """Rewrite the docstring of every object griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = convert(obj.docstring.value)

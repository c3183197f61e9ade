"""How many examples the property and fuzz tests draw: a quick volume for ``make test``,
the full one for ``make faults`` (``STUISESSION_FULL_VOLUME=1``).

The slowest property and fuzz tests are marked ``volume``; ``make faults`` runs them
with ``-m volume`` at full volume, ``make test`` at the quick one (same tests, same
derandomized seeds, fewer examples).
"""

from __future__ import annotations

import os

FULL = os.environ.get("STUISESSION_FULL_VOLUME") == "1"


def examples(full: int, quick: int) -> int:
    """*full* under ``STUISESSION_FULL_VOLUME=1``, else *quick*."""
    return full if FULL else quick

"""The adversarial suite runs under ``make faults`` (it takes minutes), not in the normal suite.

It is collected when ``STUISESSION_FAULT_ITERATIONS`` or ``STUISESSION_ADVERSARIAL``
is set; the normal suite runs one small attack end to end instead
(``tests/test_adversarial_smoke.py``).
"""

from __future__ import annotations

import os

collect_ignore_glob = (
    []
    if os.environ.get("STUISESSION_FAULT_ITERATIONS") or os.environ.get("STUISESSION_ADVERSARIAL")
    else ["test_*.py"]
)

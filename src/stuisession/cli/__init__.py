"""Layer 8 (top) — the ``stuisession`` command line.

May import: every layer.
"""

from stuisession.cli.app import main

__all__ = ["main"]

"""``python -m stuisession``: the same as the ``stuisession`` command."""

from .cli import main

raise SystemExit(main())

"""``python -m stuisession``: the same as the ``stuisession`` command."""

from stuisession.cli import main

raise SystemExit(main())

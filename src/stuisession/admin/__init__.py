"""Layer 7 — operator tasks on a store: open, verify, export/import, key rotation.

May import: everything below the bridge (``service`` and lower), never ``cli``.
"""

from stuisession.admin.core import (
    RotationReport,
    export_sessions,
    import_sessions,
    open_store,
    rotate_keys,
    verify_store,
)
from stuisession.admin.core import (
    VerifyProblem as VerifyProblem,
)

# VerifyProblem moved to stuisession.stores.base; still importable from here
__all__ = [
    "RotationReport",
    "export_sessions",
    "import_sessions",
    "open_store",
    "rotate_keys",
    "verify_store",
]

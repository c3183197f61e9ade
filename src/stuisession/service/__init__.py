"""Layer 4 — session policy: the operations a session supports, whatever the transport.

Holds :class:`SessionService` (create, restore, update, close, sweep, statistics) and the
credentials it checks.

May import: :mod:`stuisession.stores`, :mod:`stuisession.security`, :mod:`stuisession.codec`,
:mod:`stuisession.state` and the foundation modules.
"""

from stuisession.service.core import Created, Credentials, Restored, SessionService

__all__ = ["Created", "Credentials", "Restored", "SessionService"]

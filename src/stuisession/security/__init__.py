"""Layer 3 (beside ``stores``) — credentials, audit and rate limiting.

Holds resume/client tokens (:mod:`.auth`), the hash-chained audit log (:mod:`.audit`)
and the token-bucket limiter (:mod:`.ratelimit`).

May import: the foundation modules only.
"""

from stuisession.security.audit import AuditLog, AuditReport
from stuisession.security.auth import TokenAuthority
from stuisession.security.ratelimit import TokenBucketLimiter

__all__ = ["AuditLog", "AuditReport", "TokenAuthority", "TokenBucketLimiter"]

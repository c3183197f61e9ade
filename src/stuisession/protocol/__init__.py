"""Layer 5 — the wire protocol, sans I/O: one JSON request in, one JSON response out.

Holds the handler (:mod:`.handler`) and the reply (dedup) cache (:mod:`.dedup`).

May import: :mod:`stuisession.service` and everything below it.
"""

from stuisession.protocol.handler import ProtocolHandler, error_response

__all__ = ["ProtocolHandler", "error_response"]

"""Layer 6 — the ZeroMQ bridge: sockets, connections, forwarding to Pharo, the worker pool.

May import: :mod:`stuisession.protocol` and everything below it.
"""

from stuisession.bridge.server import BridgeServer

__all__ = ["BridgeServer"]

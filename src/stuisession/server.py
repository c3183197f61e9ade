"""Compatibility import path: :class:`BridgeServer` lives in :mod:`stuisession.bridge`."""

from stuisession.bridge.server import BridgeServer

__all__ = ["BridgeServer"]

"""Layer 2 — sealed bytes: snapshots and journal records.

Holds the snapshot format (:mod:`.snapshot`) and the delta-journal record format
(:mod:`.journal`); both seal through one private envelope (zstd, AES-256-GCM, HMAC-SHA256)
with one decoded-size guard.

May import: :mod:`stuisession.state` and the foundation modules.
"""

from stuisession.codec.snapshot import Snapshot, SnapshotCodec, SnapshotHeader, parse_header

__all__ = ["Snapshot", "SnapshotCodec", "SnapshotHeader", "parse_header"]

"""What one entry of a store's decoded-session cache costs in memory (a pure function).

The cache must charge what it actually holds: a decoded state takes about
:data:`DECODED_FACTOR` times its JSON size in memory (measured with
``benchmarks/bench_memory.py``). The compressed snapshot size says nothing
about that (a 60 MB state may compress to a few hundred kB), so it is used
only when the decoded size is unknown, with the worst compression ratio the
codec allows (``max_ratio``).
"""

from __future__ import annotations

__all__ = ["DECODED_FACTOR", "decoded_cost"]

#: memory of a decoded state per byte of its JSON (attrs objects, dicts, str headers)
DECODED_FACTOR = 14


def decoded_cost(blob_size: int, state_json_size: int | None = None, max_ratio: int = 7) -> int:
    """Estimated bytes a cache entry holds: the sealed blob plus its decoded state.

    *state_json_size* is the decoded state's JSON size when known (exact);
    otherwise the blob is assumed to expand *max_ratio* times.
    """
    decoded = state_json_size if state_json_size is not None else max_ratio * blob_size
    return blob_size + DECODED_FACTOR * decoded

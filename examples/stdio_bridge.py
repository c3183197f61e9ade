"""A second transport around the same sans-IO core: one JSON request per line.

Run:  python examples/stdio_bridge.py [STORE_DIR] < requests.jsonl

Each input line is one request; each output line is its reply. The handler
never raises, so a bad line yields an error reply and the loop goes on.
"""

from __future__ import annotations

import sys

from stuisession import FileStore, ProtocolHandler


def serve(lines: object, out: object, store_dir: str) -> None:
    handler = ProtocolHandler(FileStore(store_dir))
    try:
        for line in lines:  # type: ignore[attr-defined]
            if line.strip():
                out.write(handler.handle_wire(line.encode()).decode() + "\n")  # type: ignore[attr-defined]
                out.flush()  # type: ignore[attr-defined]
    finally:
        handler.store.close()


if __name__ == "__main__":
    serve(sys.stdin, sys.stdout, sys.argv[1] if len(sys.argv) > 1 else "./.stuisession")

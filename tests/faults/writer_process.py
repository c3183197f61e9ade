"""A writer process for the SIGKILL fault test (not a test module).

Usage: python writer_process.py STORE_DIR SESSION_ID START

Applies merge updates k<START>, k<START+1>, ... to one session of a FileStore
as fast as it can and prints each acknowledged key on stdout (flushed) only
after the update call returned, i.e. after the store acknowledged it durably.
"""

from __future__ import annotations

import sys

from stuisession import FileStore, Policy, ProtocolHandler


def main() -> None:
    store_dir, sid, start = sys.argv[1], sys.argv[2], int(sys.argv[3])
    handler = ProtocolHandler(FileStore(store_dir), Policy(rate_limit=None), dedup_ttl=None)
    i = start
    while True:
        reply = handler.handle(
            {
                "id": f"w{i}",
                "command": "update_session_state",
                "parameters": {"session_id": sid, "state_data": {f"k{i}": i}, "mode": "merge"},
            }
        )
        if reply["status"] != "success":
            print(f"ERR {reply['error_code']}", flush=True)
            return
        print(f"k{i}", flush=True)
        i += 1


if __name__ == "__main__":
    main()

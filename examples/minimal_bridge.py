"""A minimal ZeroMQ bridge in about 30 lines: the sans-IO handler behind a ROUTER socket.

Run:  python examples/minimal_bridge.py [ENDPOINT] [STORE_DIR]

Single-threaded and without the extras of `stuisession serve` (worker pool,
forwarding to Pharo, connection tracking); it shows how little a transport
needs: receive frames, hand the body to `handle_wire`, send the reply back
with the same routing envelope, sweep now and then.
"""

from __future__ import annotations

import sys
import time

import zmq

from stuisession import FileStore, ProtocolHandler


def serve(endpoint: str, store_dir: str, max_requests: int | None = None) -> None:
    handler = ProtocolHandler(FileStore(store_dir))
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.ROUTER)
    sock.bind(endpoint)
    next_sweep, served = time.monotonic() + handler.policy.cleanup_interval, 0
    try:
        while max_requests is None or served < max_requests:
            if sock.poll(1000):
                *envelope, body = sock.recv_multipart()  # REQ: [identity, b"", body]
                sock.send_multipart([*envelope, handler.handle_wire(body)])
                served += 1
            if time.monotonic() >= next_sweep:
                handler.cleanup_expired()
                next_sweep = time.monotonic() + handler.policy.cleanup_interval
    finally:
        sock.close(linger=100)
        handler.store.close()


if __name__ == "__main__":
    args = sys.argv[1:]
    serve(
        args[0] if args else "tcp://127.0.0.1:5555", args[1] if len(args) > 1 else "./.stuisession"
    )

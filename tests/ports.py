"""Free loopback ports for test servers that nothing else in the run can take.

Two hazards make "bind port 0, close, hand the number out" unsafe here:

- ``make test`` runs the suite on two pytest-xdist workers at once: another worker
  could be handed the same number before the first binds it for real (a
  redis-server, a bridge subprocess), and one test would talk to the other's server.
  So each worker takes only ports of its own residue class (``port % workers ==
  worker index``); a cluster node's bus port (``port + 10000``) has the same residue.
- Tests SIGKILL a server and start it again *on the same port*. A port from the
  kernel's ephemeral range (``ip_local_port_range``, 32768-60999 by default) could
  be taken in between as the local end of any outgoing connection. So the ports
  come from below that range (10000-22767, so a bus port stays below it too).

Within a process a port is never handed out twice; a port someone listens on is
never handed out (it is bound first to check).
"""

from __future__ import annotations

import os
import random
import socket

HOST = "127.0.0.1"
LOW, HIGH = 10_000, 22_768  # HIGH + 10000 (a cluster bus port) < 32768

_handed_out: set[int] = set()
_random = random.SystemRandom()  # Hypothesis reseeds the global `random`; this is not


def _worker() -> tuple[int, int]:
    """(index, count) of this xdist worker; (0, 1) outside xdist."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", ...
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if not name.startswith("gw") or count < 2:
        return 0, 1
    return int(name[2:]) % count, count


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port(*, bus_offset: int | None = None) -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, this worker's only.

    With *bus_offset*, ``port + bus_offset`` is free as well (a Redis Cluster
    node's bus port). Raises RuntimeError after 1,000 tries.
    """
    index, count = _worker()
    for _ in range(1000):
        port = _random.randrange(LOW, HIGH)
        port -= (port - index) % count  # this worker's residue class
        if port < LOW or port in _handed_out or not _bindable(port):
            continue
        if bus_offset is not None and not _bindable(port + bus_offset):
            continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free loopback port found for this worker")

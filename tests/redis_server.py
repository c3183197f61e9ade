"""A hermetic redis-server for tests and benchmarks (not a test module).

``RedisServer`` runs ``redis-server`` on a free loopback port with no
persistence and its own temporary directory, waits until it answers PING,
and can be stopped and started again on the same port (to test reconnection).
Only 127.0.0.1 is ever used.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from ports import free_port

ENV_REDIS_SERVER = "STUISESSION_REDIS_SERVER"
HOST = "127.0.0.1"


class RedisServerMissing(RuntimeError):
    """No redis-server executable was found."""


def find_redis_server() -> str:
    """The redis-server executable: ``$STUISESSION_REDIS_SERVER``, PATH, or /usr/bin."""
    explicit = os.environ.get(ENV_REDIS_SERVER)
    if explicit:
        return explicit
    found = shutil.which("redis-server")
    if found:
        return found
    for candidate in ("/usr/bin/redis-server", "/usr/local/bin/redis-server"):
        if os.access(candidate, os.X_OK):
            return candidate
    raise RedisServerMissing(
        "redis-server is not installed (the Redis store tests need it): install it "
        "(e.g. `apt-get install redis-server`) or point $STUISESSION_REDIS_SERVER at it"
    )


def ping(port: int, timeout: float = 0.5, password: str | None = None) -> bool:
    """True if a Redis server on *port* answers PING (raw RESP, no client library)."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            if password is not None:
                s.sendall(f"AUTH {password}\r\n".encode())
                if not s.recv(64).startswith(b"+OK"):
                    return False
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def server_pid(port: int, timeout: float = 2.0, password: str | None = None) -> int | None:
    """The ``process_id`` the Redis server on *port* reports (``INFO server``), or None."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            if password is not None:
                s.sendall(f"AUTH {password}\r\n".encode())
                if not s.recv(64).startswith(b"+OK"):
                    return None
            s.sendall(b"INFO server\r\n")
            data = b""
            while b"process_id:" not in data or not data.endswith(b"\r\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    for line in data.decode(errors="replace").splitlines():
        if line.startswith("process_id:"):
            return int(line.split(":", 1)[1])
    return None


class RedisServer:
    """A redis-server subprocess on ``127.0.0.1:<port>``.

    :param extra_args: more ``redis-server`` options, e.g. ``["--requirepass", "x"]``.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        extra_args: Sequence[str] = (),
        password: str | None = None,
        start_timeout: float = 15.0,
    ) -> None:
        self.executable = find_redis_server()
        self.port = port or free_port()
        self.password = password
        self.extra_args = list(extra_args)
        if password is not None:
            self.extra_args += ["--requirepass", password]
        self.start_timeout = start_timeout
        self._tmp = tempfile.TemporaryDirectory(prefix="stuisession-redis-")
        self.dir = Path(self._tmp.name)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.password is not None:
            return f"redis://:{self.password}@{HOST}:{self.port}/0"
        return f"redis://{HOST}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> RedisServer:
        """Start the server (on the same port as before, if it ran already) and wait for PING."""
        if self.running:
            return self
        args = [
            self.executable,
            "--port",
            str(self.port),
            "--bind",
            HOST,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.dir),
            "--logfile",
            str(self.dir / "redis.log"),
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
            *self.extra_args,
        ]
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if ping(self.port, password=self.password):
                if server_pid(self.port, password=self.password) == self.proc.pid:
                    return self
                break  # another process's server answers on this port: ours did not bind
            time.sleep(0.02)
        err = self._log_tail()
        self.stop()
        raise RuntimeError(f"redis-server did not start on {HOST}:{self.port}: {err}")

    def stop(self) -> None:
        """Kill the server and wait until its port is closed."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()

    def restart(self) -> None:
        """Stop and start again on the same port (all data is lost: no persistence)."""
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        self._tmp.cleanup()

    def _log_tail(self) -> str:
        text = ""
        with contextlib.suppress(OSError):
            text = (self.dir / "redis.log").read_text(errors="replace")
        if self.proc is not None and self.proc.stderr is not None and self.proc.poll() is not None:
            with contextlib.suppress(OSError, ValueError):
                text += self.proc.stderr.read().decode(errors="replace")
        return text.strip()[-500:] or "(no output)"

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_redis_server(
    *, extra_args: Sequence[str] = (), password: str | None = None, attempts: int = 3
) -> RedisServer:
    """Start a server on a free port, trying another port if one was taken meanwhile."""
    last: Exception | None = None
    for _ in range(attempts):
        server = RedisServer(extra_args=extra_args, password=password)
        try:
            return server.start()
        except RuntimeError as exc:
            server.close()
            last = exc
    raise RuntimeError(f"could not start redis-server: {last}")

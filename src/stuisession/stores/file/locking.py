"""Stripe locks of a file store: a thread lock plus an ``flock`` per stripe.

Writers of a session serialise on its stripe, across threads (a
``threading.Lock``) and processes sharing the directory (an ``flock`` on the
stripe's lock file), which makes compare-and-swap safe for both.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
import zlib
from collections.abc import Iterator

import filelock

from stuisession import _fs
from stuisession.errors import StorageError
from stuisession.stores.file.layout import storage_error


class StripeLocks:
    """A fixed set of striped locks over the lock files *paths*."""

    def __init__(self, paths: list[str], timeout: float) -> None:
        self.paths = paths
        self.timeout = float(timeout)
        self._create_lock_files(paths)
        self._thread_locks = [threading.Lock() for _ in paths]
        # one FileLock per stripe, shared by this process's threads (they are
        # serialised by the thread lock first); the lock file stays in place so
        # no write ever pays for creating one
        self.file_locks: list[filelock.BaseFileLock] = [
            filelock.FileLock(
                p, mode=0o600, thread_local=False, preserve_lock_file=True, poll_interval=0.005
            )
            for p in paths
        ]

    @staticmethod
    def _create_lock_files(paths: list[str]) -> None:
        try:
            for p in paths:
                if not os.path.lexists(p):
                    # O_EXCL|O_NOFOLLOW: a symlink planted at the name is never followed
                    with contextlib.suppress(FileExistsError):
                        os.close(
                            os.open(
                                p,
                                os.O_RDWR | os.O_CREAT | os.O_EXCL | _fs.O_CLOEXEC | _fs.O_NOFOLLOW,
                                0o600,
                            )
                        )
        except OSError as exc:
            raise storage_error("create the lock files", exc) from exc

    def index(self, session_id: str) -> int:
        """The stripe of *session_id*."""
        # crc32, not hash(): it must be the same in every process
        return zlib.crc32(session_id.encode("ascii")) % len(self.paths)

    @contextlib.contextmanager
    def locked(self, session_id: str) -> Iterator[None]:
        """Hold the stripe lock of *session_id* (threads, then processes).

        Uncontended, a plain non-blocking ``flock`` on a fresh descriptor takes
        microseconds; only when another process holds the stripe does
        ``filelock`` do the bounded, polling wait. Raises StorageError
        (``reason: lock_timeout``) after :attr:`timeout` seconds.
        """
        i = self.index(session_id)
        deadline = time.monotonic() + self.timeout
        thread_lock = self._thread_locks[i]
        if not thread_lock.acquire(timeout=self.timeout):
            raise self._timeout_error()
        try:
            fd = self._try_flock(i)
            if fd is not None:
                try:
                    yield
                finally:
                    os.close(fd)  # releases the flock
                return
            flock = self.file_locks[i]
            try:
                # timeout 0 is a single attempt; a negative one would wait forever
                flock.acquire(timeout=max(0.0, deadline - time.monotonic()))
            except filelock.Timeout:
                raise self._timeout_error() from None
            except OSError as exc:
                raise storage_error("acquire a lock file", exc) from exc
            try:
                yield
            finally:
                flock.release()
        finally:
            thread_lock.release()

    def _try_flock(self, i: int) -> int | None:
        """A descriptor holding stripe *i*'s flock, or None if another process holds it."""
        try:
            fd = os.open(self.paths[i], os.O_RDWR | _fs.O_CLOEXEC | _fs.O_NOFOLLOW)
        except OSError as exc:
            raise storage_error("open a lock file", exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError as exc:
            os.close(fd)
            raise storage_error("acquire a lock file", exc) from exc
        return fd

    def _timeout_error(self) -> StorageError:
        return StorageError(
            f"file store lock not acquired within {self.timeout:g} s "
            "(another writer holds it or is stuck)",
            reason="lock_timeout",
        )

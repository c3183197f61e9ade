"""Atomic, durable file I/O of a file store (built on :mod:`stuisession._fs`).

Writes go to a temp file that is fsync'd and renamed (or linked) over the
current file, so at every instant a complete snapshot is in place; readers
take no lock. Temp files a crashed writer left behind are swept.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time

from stuisession import _fs
from stuisession.codec.snapshot import parse_header
from stuisession.errors import IntegrityError, StorageError
from stuisession.stores.file.layout import TMP_SUFFIX, SessionPaths, errno_name

log = logging.getLogger("stuisession.stores.file")

#: temp files older than this (seconds) belong to a crashed writer
STALE_TMP_AGE = 60.0
#: a first read of this many bytes holds the whole head of a typical snapshot
HEAD_READ = 4096


def read_file(path: str, head_only: bool = False, *, fs: _fs.Beneath) -> bytes | None:
    """The file's bytes (or just its snapshot head), None if it does not exist.

    Opened beneath the store directory through *fs*: never through a symlink,
    at any level (OSError ELOOP/ENOTDIR instead).
    """
    if not head_only:
        return fs.read(path)
    try:
        fd = fs.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        return pread_head(fd)
    finally:
        os.close(fd)


def pread_head(fd: int) -> bytes:
    """The snapshot head of the open file *fd*: header, key id, metadata, head tag.

    A malformed or truncated head is returned as it is; ``read_info`` reports it.
    """
    data = os.pread(fd, HEAD_READ, 0)
    if len(data) < HEAD_READ:
        return data
    try:
        need = parse_header(data).payload_offset
    except IntegrityError:
        return data
    return os.pread(fd, need, 0) if need > len(data) else data


class FileWriter:
    """Temp writes, directory fsyncs and temp sweeps of one store."""

    def __init__(
        self, sessions_dir: str, *, fsync: bool, sweep_age: float, fs: _fs.Beneath
    ) -> None:
        self.sessions_dir = sessions_dir
        #: every file operation goes through it (never through a planted symlink)
        self.fs = fs
        self.fsync = fsync
        self._sweep_age = sweep_age
        self._swept: set[str] = set()

    def fsync_dir(self, path: str) -> None:
        if self.fsync:
            self.fs.fsync_dir(path)

    def fsync_dir_committed(self, path: str) -> None:
        """The directory fsync after a change became visible (a rename, link or first append).

        The change is committed by then; if the fsync fails its durability is
        unknown, which the error says (``reason: durability_unknown``) so that a
        resend of the same request is answered, not applied again.
        """
        try:
            self.fsync_dir(path)
        except OSError as exc:
            name = errno_name(exc)
            raise StorageError(
                f"file store committed a change but could not make it durable: {name} "
                f"({exc.strerror})",
                errno=name,
                reason="durability_unknown",
            ) from exc

    def write_temp(self, directory: str, stem: str, data: bytes) -> str:
        """Write *data* to a new, fsync'd temp file in *directory*; return its path (OSError)."""
        return self.fs.write_temp(directory, stem, data, fsync=self.fsync)

    def write_session_temp(self, p: SessionPaths, blob: bytes) -> str:
        try:
            return self.write_temp(p.dir, p.name, blob)
        except FileNotFoundError:
            pass
        self.make_shard(p.dir)
        return self.write_temp(p.dir, p.name, blob)

    def make_shard(self, directory: str) -> None:
        """Create a shard directory durably (first session in it)."""
        with contextlib.suppress(FileExistsError):
            self.fs.mkdir(directory, 0o700)
        self.fsync_dir(self.sessions_dir)

    def discard(self, path: str) -> None:
        try:
            self.fs.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            # the write itself has been decided; a later sweep removes the file
            log.warning("file store: could not remove a temp file: %s", errno_name(exc))

    def write_marker(self, path: str) -> None:
        """Create the empty client index marker *path* durably."""
        directory = os.path.dirname(path)
        flags = os.O_WRONLY | os.O_CREAT
        try:
            fd = self.fs.open(path, flags)
        except FileNotFoundError:
            self.make_shard(directory)
            fd = self.fs.open(path, flags)
        os.close(fd)
        self.fsync_dir(directory)

    def sweep_dir(self, directory: str, max_age: float) -> int:
        """Remove temp files older than *max_age* seconds in *directory*; return how many."""
        removed = 0
        cutoff = time.time() - max_age
        try:
            entries = self.fs.list_dir(directory)
        except FileNotFoundError:
            return 0
        except OSError as exc:
            log.warning("file store: could not scan for temp files: %s", errno_name(exc))
            return 0
        for name, st in entries:
            if st is None or not (name.startswith(".") and name.endswith(TMP_SUFFIX)):
                continue
            try:
                if st.st_mtime < cutoff:
                    self.fs.unlink(os.path.join(directory, name))
                    removed += 1
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("file store: could not remove a stale temp file: %s", errno_name(exc))
        return removed

    def sweep_once(self, directory: str) -> None:
        # a crashed writer's temp files are cleaned up the first time this
        # instance writes into their directory, so a store never scans everything
        if directory in self._swept:
            return
        self._swept.add(directory)
        self.sweep_dir(directory, self._sweep_age)

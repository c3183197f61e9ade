"""Private filesystem helpers: the one durable atomic write and its small parts.

Every module that replaces a file durably (the file store, the keyring, the
audit head, admin exports) goes through :func:`atomic_write` or
:func:`write_temp`, so the rules live in one place:

* the data goes to a fresh temp file in the target's directory, opened with
  ``O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC`` (never through a planted
  symlink, never inherited by a child process);
* every byte is written (short writes are looped over);
* the file is fsync'd, then renamed over the target (or linked, to create it
  only if absent), then the directory is fsync'd so the new name survives a
  power loss.

A foundation module: it imports nothing from the package.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterator

O_CLOEXEC: int = getattr(os, "O_CLOEXEC", 0)
O_NOFOLLOW: int = getattr(os, "O_NOFOLLOW", 0)
O_DIRECTORY: int = getattr(os, "O_DIRECTORY", 0)
#: suffix of every temp file this module creates
TMP_SUFFIX = ".tmp"

__all__ = [
    "O_CLOEXEC",
    "O_DIRECTORY",
    "O_NOFOLLOW",
    "TMP_SUFFIX",
    "Beneath",
    "atomic_write",
    "fsync_dir",
    "open_dir",
    "read_file",
    "write_all",
    "write_temp",
]


def write_all(fd: int, data: bytes) -> None:
    """Write all of *data* to *fd*, looping over short writes (raises OSError)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:  # pragma: no cover - os.write raises rather than return 0 on files
            raise OSError("write made no progress")
        view = view[n:]


def open_dir(path: str | os.PathLike[str]) -> int:
    """A read-only descriptor of the directory *path*; a symlink there is refused."""
    return os.open(path, os.O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync the directory *path*, making a rename, link or unlink in it durable."""
    fd = open_dir(path)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_temp(
    directory: str | os.PathLike[str],
    stem: str,
    data: bytes,
    *,
    fsync: bool = True,
    mode: int = 0o600,
) -> str:
    """Write *data* to a new temp file ``.<stem>.<random>.tmp`` in *directory*; return its path.

    The file is created exclusively (``O_EXCL | O_NOFOLLOW``), so neither an
    existing file nor a planted symlink is ever written through. Raises
    OSError; the temp file is removed if anything fails.
    """
    tmp = os.path.join(os.fspath(directory), f".{stem}.{secrets.token_hex(6)}{TMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode)
    fill_temp(fd, data, fsync=fsync, discard=lambda: os.unlink(tmp))
    return tmp


def fill_temp(fd: int, data: bytes, *, fsync: bool, discard: Callable[[], None]) -> None:
    """Write *data* to the new temp file *fd* (all of it), fsync it, close it.

    On any failure *discard* removes the temp file (its OSError is ignored) and the
    error is raised again.
    """
    try:
        try:
            write_all(fd, data)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            discard()
        raise


def atomic_write(
    path: str | os.PathLike[str],
    data: bytes,
    *,
    create_only: bool = False,
    fsync: bool = True,
    mode: int = 0o600,
) -> None:
    """Replace (or with *create_only*, create) *path* by *data*, atomically and durably.

    Readers see the old file or the complete new one, never a part. With
    *create_only* the file is published with ``link()``, raising
    :class:`FileExistsError` if *path* exists (the first writer wins).
    *fsync* False skips both fsyncs (tests and benchmarks only). A symlink at
    *path* is replaced, never followed. Raises OSError; no temp file is left.
    """
    target = os.fspath(path)
    directory = os.path.dirname(target) or "."
    tmp = write_temp(directory, os.path.basename(target), data, fsync=fsync, mode=mode)
    try:
        if create_only:
            os.link(tmp, target)
        else:
            os.replace(tmp, target)
    finally:
        # after a rename the name is gone already; after a link (or a failure) it goes now
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    if fsync:
        fsync_dir(directory)


def read_file(path: str | os.PathLike[str]) -> bytes | None:
    """The whole content of the regular file *path*, None if it does not exist.

    Opened with ``O_NOFOLLOW``: a symlink at *path* raises OSError (ELOOP).
    """
    try:
        fd = os.open(path, os.O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb", buffering=0) as f:
        return f.readall()


class Beneath:
    """File operations on paths inside the directory *root*, never through a symlink.

    Every directory between *root* and the file is opened with
    ``O_NOFOLLOW | O_DIRECTORY`` relative to its parent's descriptor, and the
    operation itself runs relative to the last one (``dir_fd=``) with symlinks
    not followed, so a symlink planted at any level below *root* -- a shard
    directory, a journal, a temp name -- is refused (ELOOP/ENOTDIR) or
    replaced, never followed out of the store. *root* itself is opened with
    ``O_NOFOLLOW`` unless *follow_root* (the operator's explicit choice).
    Paths outside *root* raise ValueError. Every method raises OSError.
    """

    __slots__ = ("_follow_root", "root")

    def __init__(self, root: str | os.PathLike[str], *, follow_root: bool = False) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self._follow_root = follow_root

    def _parts(self, path: str) -> list[str]:
        rel = os.path.relpath(os.path.abspath(path), self.root)
        if rel == ".":
            return []
        parts = rel.split(os.sep)
        if parts[0] == ".." or os.path.isabs(rel):
            raise ValueError("path is outside the store directory")
        return parts

    def open_dir(self, path: str) -> int:
        """A descriptor of the directory *path* (at or below the root), opened no-follow."""
        flags = os.O_RDONLY | O_DIRECTORY | O_CLOEXEC
        fd = os.open(self.root, flags if self._follow_root else flags | O_NOFOLLOW)
        try:
            for part in self._parts(path):
                nxt = os.open(part, flags | O_NOFOLLOW, dir_fd=fd)
                os.close(fd)
                fd = nxt
        except BaseException:
            os.close(fd)
            raise
        return fd

    @contextlib.contextmanager
    def _at(self, path: str) -> Iterator[tuple[int, str]]:
        directory, name = os.path.split(os.path.abspath(path))
        fd = self.open_dir(directory)
        try:
            yield fd, name
        finally:
            os.close(fd)

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        """``os.open`` of *path*, never through a symlink (the file itself included)."""
        with self._at(path) as (d, name):
            return os.open(name, flags | O_NOFOLLOW | O_CLOEXEC, mode, dir_fd=d)

    def read(self, path: str) -> bytes | None:
        """The whole regular file *path*, None if it does not exist."""
        try:
            fd = self.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "rb", buffering=0) as f:
            return f.readall()

    def replace(self, src: str, dst: str) -> None:
        """Rename *src* over *dst* (a symlink at *dst* is replaced, not followed)."""
        with self._at(src) as (sd, sname), self._at(dst) as (dd, dname):
            os.replace(sname, dname, src_dir_fd=sd, dst_dir_fd=dd)

    def link(self, src: str, dst: str) -> None:
        """Hard-link *src* as *dst* (FileExistsError if *dst* exists; never follows *src*)."""
        with self._at(src) as (sd, sname), self._at(dst) as (dd, dname):
            os.link(sname, dname, src_dir_fd=sd, dst_dir_fd=dd, follow_symlinks=False)

    def unlink(self, path: str) -> None:
        with self._at(path) as (d, name):
            os.unlink(name, dir_fd=d)

    def lstat(self, path: str) -> os.stat_result:
        with self._at(path) as (d, name):
            return os.stat(name, dir_fd=d, follow_symlinks=False)

    def lexists(self, path: str) -> bool:
        try:
            self.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return False
        return True

    def mkdir(self, path: str, mode: int = 0o700) -> None:
        with self._at(path) as (d, name):
            os.mkdir(name, mode, dir_fd=d)

    def fsync_dir(self, path: str) -> None:
        fd = self.open_dir(path)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def write_temp(self, directory: str, stem: str, data: bytes, *, fsync: bool = True) -> str:
        """As :func:`write_temp`, created relative to the no-follow descriptor of *directory*."""
        tmp = os.path.join(directory, f".{stem}.{secrets.token_hex(6)}{TMP_SUFFIX}")
        fd = self.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        fill_temp(fd, data, fsync=fsync, discard=lambda: self.unlink(tmp))
        return tmp

    def list_dir(self, path: str) -> list[tuple[str, os.stat_result | None]]:
        """``(name, lstat or None if gone)`` of each entry of the directory *path*."""
        fd = self.open_dir(path)
        try:
            names = os.listdir(fd)
            out: list[tuple[str, os.stat_result | None]] = []
            for name in names:
                try:
                    out.append((name, os.stat(name, dir_fd=fd, follow_symlinks=False)))
                except FileNotFoundError:
                    out.append((name, None))
            return out
        finally:
            os.close(fd)

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
    try:
        try:
            write_all(fd, data)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


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

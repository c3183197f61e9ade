"""Helpers for the fault-injection tests (not a test module).

:class:`FaultInjector` wraps the generic ``os`` calls a store uses (``open``,
``write``, ``fsync``, ``replace``, ``rename``, ``link``, ``mkdir``, ``unlink``)
and makes chosen calls fail with an ``OSError``. Only calls that touch a path
under the store's directory are considered (file-descriptor calls are traced
back to the path they were opened with), so pytest, hypothesis or logging are
never affected. A rule fails the Nth matching call or every call matching a
predicate. Calls that would fail or do nothing anyway (renaming a file that does
not exist, creating a file or directory that exists) are passed through
unchanged and not counted, so "the Nth call" means the same thing as on a real
file system that runs out of space at that point.

:class:`Harness` drives a :class:`~stuisession.ProtocolHandler` over a
:class:`~stuisession.FileStore` and checks replies; :func:`check_reply` holds
the envelope invariants of ``tests/test_protocol_fuzz.py``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from stuisession import FileStore, ManualClock, Policy, ProtocolHandler
from stuisession.security.identity import Caller
from stuisession.stores.file.layout import session_stem

#: iterations of the randomised tests: quick by default, ``make faults`` sets 500
ITERATIONS = int(os.environ.get("STUISESSION_FAULT_ITERATIONS", "0")) or None

PATH_CALLS = ("open", "replace", "rename", "link", "mkdir", "unlink", "rmdir", "truncate")
FD_CALLS = ("write", "fsync", "fdatasync", "ftruncate")
ALL_CALLS = PATH_CALLS + FD_CALLS
ALIASES = {
    "rename": ("replace",),
    "fsync": ("fdatasync",),
    "truncate": ("ftruncate",),
}

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\Z")
ERROR_TYPES = {
    "SessionError",
    "SessionNotFound",
    "RuntimeError",
    "InternalError",
    "InvalidRequest",
    "MessageTooLarge",
    "UnknownCommand",
    "ValidationError",
    "StateTooLarge",
    "Conflict",
    "IntegrityError",
    "StorageError",
    "AccessDenied",
    "RateLimited",
    "Busy",
    "UpstreamError",
}


def iterations(quick: int) -> int:
    """*quick* by default; ``$STUISESSION_FAULT_ITERATIONS`` when it is set."""
    return ITERATIONS or quick


@dataclass(frozen=True)
class Call:
    """One intercepted call: its name, the paths it touches, and its open flags."""

    name: str
    paths: tuple[str, ...]
    flags: int = 0
    #: the (first) path is a directory (an fsync of a directory, mkdir, rmdir)
    is_dir: bool = False

    @property
    def path(self) -> str:
        return self.paths[0]


@dataclass
class Rule:
    """Fail calls named *call* with *code*: the *nth* matching one, or all of them.

    ``"rename"`` also matches ``replace``; ``"fsync"`` also ``fdatasync``;
    ``"truncate"`` also ``ftruncate``.
    """

    call: str
    code: int
    nth: int | None = None
    when: Callable[[Call], bool] | None = None
    seen: int = 0
    fired: list[Call] = field(default_factory=list)

    def matches(self, c: Call) -> bool:
        if c.name != self.call and c.name not in ALIASES.get(self.call, ()):
            return False
        if self.when is not None and not self.when(c):
            return False
        self.seen += 1
        return self.nth is None or self.seen == self.nth


# -- predicates ------------------------------------------------------------------------
def creates_file(c: Call) -> bool:
    """An ``open`` that creates a new file (the file does not exist yet, its directory does)."""
    return (
        bool(c.flags & os.O_CREAT)
        and not os.path.lexists(c.path)
        and os.path.isdir(os.path.dirname(c.path))
    )


def on_directory(c: Call) -> bool:
    return c.is_dir


def on_file(c: Call) -> bool:
    return not c.is_dir


def opens_for_writing(c: Call) -> bool:
    return bool(c.flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND))


def opens_for_reading(c: Call) -> bool:
    return not opens_for_writing(c) and not c.is_dir


class FaultInjector:
    """Make chosen ``os`` calls on paths under *root* fail (see the module docstring).

    Install it with :meth:`install` (through a ``MonkeyPatch``) or use it as a
    context manager; :meth:`fail` adds a rule, :meth:`clear` removes all of them.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.path.realpath(root)
        self.rules: list[Rule] = []
        #: every intercepted call, whether it failed or not
        self.calls: list[Call] = []
        #: the calls that were made to fail
        self.fired: list[Call] = []
        self._fds: dict[int, tuple[str, int, int, bool]] = {}
        self._lock = threading.RLock()
        self._real: dict[str, Callable[..., Any]] = {}
        self._mp: pytest.MonkeyPatch | None = None

    # -- rules -------------------------------------------------------------------------
    def fail(
        self,
        call: str,
        code: int = errno.EIO,
        *,
        nth: int | None = None,
        when: Callable[[Call], bool] | None = None,
    ) -> Rule:
        """Fail the *nth* call (1-based, counted from now) named *call* matching *when*,
        or every matching call when *nth* is None (aliases: see :class:`Rule`)."""
        assert call in ALL_CALLS, call
        rule = Rule(call, code, nth, when)
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        """Remove every rule (the fault has cleared); keep tracing calls."""
        with self._lock:
            self.rules.clear()

    def reset_log(self) -> None:
        with self._lock:
            self.calls.clear()
            self.fired.clear()

    # -- installation --------------------------------------------------------------------
    def install(self, monkeypatch: pytest.MonkeyPatch) -> FaultInjector:
        for name in ("open", "close", *PATH_CALLS[1:], *FD_CALLS):
            real = getattr(os, name, None)
            if real is None:
                continue
            self._real[name] = real
            monkeypatch.setattr(os, name, self._wrapper(name, real))
        return self

    @contextlib.contextmanager
    def installed(self) -> Iterator[FaultInjector]:
        mp = pytest.MonkeyPatch()
        try:
            self.install(mp)
            yield self
        finally:
            mp.undo()

    # -- internals -------------------------------------------------------------------------
    def _under_root(self, path: Any) -> str | None:
        if isinstance(path, int):
            return None
        try:
            p = os.path.abspath(os.fsdecode(path))
        except (TypeError, ValueError):
            return None
        if p == self.root or p.startswith(self.root + os.sep):
            return p
        # the store may have been given a path through a symlink
        rp = os.path.realpath(p)
        if rp == self.root or rp.startswith(self.root + os.sep):
            return p
        return None

    def _at(self, dir_fd: Any, path: Any) -> Any:
        """*path* made absolute through the traced directory descriptor *dir_fd*."""
        if dir_fd is None or isinstance(path, int):
            return path
        found = self._fd_path(dir_fd)
        if found is None:
            return path  # a directory outside the root: not traced
        return os.path.join(found[0], os.fsdecode(path))

    def _fd_path(self, fd: Any) -> tuple[str, bool] | None:
        if not isinstance(fd, int):
            return None
        entry = self._fds.get(fd)
        if entry is None:
            return None
        path, dev, ino, is_dir = entry
        try:
            st = os.fstat(fd)
        except OSError:
            return None
        if (st.st_dev, st.st_ino) != (dev, ino):
            return None  # the descriptor was closed and reused behind our back
        return path, is_dir

    def _check(self, call: Call) -> None:
        with self._lock:
            self.calls.append(call)
            for rule in self.rules:
                if rule.matches(call):
                    rule.fired.append(call)
                    self.fired.append(call)
                    raise OSError(rule.code, os.strerror(rule.code), call.path)

    def _wrapper(self, name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        if name == "open":

            def fake_open(path: Any, flags: int, mode: int = 0o777, **kw: Any) -> int:
                p = self._under_root(self._at(kw.get("dir_fd"), path))
                if p is not None:
                    is_dir = os.path.isdir(p) and not flags & os.O_CREAT
                    self._check(Call("open", (p,), flags, is_dir))
                fd: int = real(path, flags, mode, **kw)
                with self._lock:
                    if p is None:
                        self._fds.pop(fd, None)
                    else:
                        st = os.fstat(fd)
                        self._fds[fd] = (p, st.st_dev, st.st_ino, os.path.isdir(p))
                return fd

            return fake_open
        if name == "close":

            def fake_close(fd: int) -> None:
                with self._lock:
                    self._fds.pop(fd, None)
                real(fd)

            return fake_close
        if name in FD_CALLS:

            def fake_fd_call(fd: Any, *args: Any, **kw: Any) -> Any:
                found = self._fd_path(fd)
                if found is not None:
                    self._check(Call(name, (found[0],), 0, found[1]))
                return real(fd, *args, **kw)

            return fake_fd_call

        def fake_path_call(*args: Any, **kw: Any) -> Any:
            if args:
                # calls relative to a directory descriptor (the store's no-follow I/O)
                # are resolved through the descriptor's traced path
                fds = (kw.get("src_dir_fd", kw.get("dir_fd")), kw.get("dst_dir_fd"))
                full = [
                    self._at(fd, a)
                    for fd, a in zip(fds, args[:2], strict=False)
                    if isinstance(a, (str, bytes, Path))
                ]
                paths = [self._under_root(a) for a in full]
                mine = tuple(p for p in paths if p is not None)
                if mine and self._would_really_run(name, tuple(full)):
                    first = paths[0] or mine[0]
                    is_dir = name in ("mkdir", "rmdir") or os.path.isdir(first)
                    self._check(Call(name, tuple(p or "" for p in paths), 0, is_dir))
            return real(*args, **kw)

        return fake_path_call

    @staticmethod
    def _would_really_run(name: str, args: tuple[Any, ...]) -> bool:
        """False for calls that fail or do nothing on any file system (not counted)."""
        src = os.fsdecode(args[0])
        if name in (
            "replace",
            "rename",
            "link",
            "unlink",
            "rmdir",
            "truncate",
        ) and not os.path.lexists(src):
            return False  # ENOENT comes first
        if name in ("replace", "rename", "link") and len(args) > 1:
            dst = os.fsdecode(args[1])
            if not os.path.isdir(os.path.dirname(os.path.abspath(dst))):
                return False  # ENOENT
            if name == "link" and os.path.lexists(dst):
                return False  # EEXIST
        if name == "mkdir":
            return not os.path.lexists(src) and os.path.isdir(os.path.dirname(os.path.abspath(src)))
        return True


# -- protocol helpers --------------------------------------------------------------------
def check_reply(reply: Any) -> dict[str, Any]:
    """The invariants every reply satisfies (as in ``tests/test_protocol_fuzz.py``)."""
    assert isinstance(reply, dict), reply
    assert {"id", "status", "timestamp"} <= set(reply), reply
    assert reply["status"] in ("success", "error"), reply
    assert isinstance(reply["timestamp"], str) and TIMESTAMP.match(reply["timestamp"]), reply
    if reply["status"] == "error":
        assert isinstance(reply["error"], str) and reply["error"], reply
        assert reply["error_code"] in ERROR_TYPES, reply
        assert reply["error_type"] in {"SessionError", "SessionNotFound", "RuntimeError", "Error"}
        assert "result" not in reply, reply
        assert isinstance(reply.get("details", {}), dict), reply
    else:
        assert isinstance(reply["result"], dict), reply
        assert "error" not in reply and "error_type" not in reply, reply
    return reply


POLICY = Policy(rate_limit=None, max_sessions_per_client=10_000)


class Harness:
    """A ProtocolHandler over a FileStore in *root*, with a ManualClock; fresh ids per request."""

    def __init__(
        self,
        root: Path,
        *,
        policy: Policy = POLICY,
        clock: ManualClock | None = None,
        **store_options: Any,
    ) -> None:
        self.root = root
        self.policy = policy
        self.clock = clock or ManualClock()
        self.store_options = store_options
        self.store = FileStore(root, **store_options)
        self.handler = ProtocolHandler(self.store, policy, clock=self.clock)
        self._n = 0

    def reopened(self) -> ProtocolHandler:
        """A handler over a fresh FileStore instance reading the same directory."""
        return ProtocolHandler(
            FileStore(self.root, **self.store_options), self.policy, clock=self.clock
        )

    def send(
        self, command: str, handler: ProtocolHandler | None = None, **params: Any
    ) -> dict[str, Any]:
        self._n += 1
        rid = f"r{self._n}"
        reply = check_reply(
            # the harness is the embedding application (a trusted caller): these tests
            # exercise the store under faults, not access control
            (handler or self.handler).handle(
                {"id": rid, "command": command, "parameters": params}, caller=Caller.local()
            )
        )
        assert reply["id"] == rid
        return reply

    def create(self, client_id: str = "alice") -> str:
        reply = self.send("create_session", client_id=client_id)
        assert reply["status"] == "success", reply
        sid: str = reply["result"]["session_id"]
        return sid

    def update(self, sid: str, data: dict[str, Any], mode: str = "merge") -> dict[str, Any]:
        reply = self.send("update_session_state", session_id=sid, state_data=data, mode=mode)
        assert reply["status"] == "success", reply
        result: dict[str, Any] = reply["result"]
        return result


@contextlib.contextmanager
def scratch_dir(fallback: Path) -> Iterator[Path]:
    """A fresh directory on tmpfs (/dev/shm: fsync costs nothing), else *fallback*.

    The simulated faults do not need real durability, and a few thousand fsyncs
    on a disk would dominate the run time.
    """
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        fallback.mkdir(parents=True, exist_ok=True)
        yield fallback
        return
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="stuisession-faults-", dir=shm))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def tmpfs(mountpoint: Path, size: str = "4m") -> Iterator[Path | None]:
    """A private tmpfs of *size* mounted at *mountpoint*, or None where mounting is
    not possible (not root, no ``mount``, no privilege in this sandbox).

    Unmounted (lazily) on exit; ``remount(path, ro=True)`` makes it read-only.
    """
    mountpoint.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        yield None
        return
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mountpoint)],
        capture_output=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0:
        yield None
        return
    try:
        yield mountpoint
    finally:
        subprocess.run(
            ["umount", "-l", str(mountpoint)], capture_output=True, timeout=30, check=False
        )


def remount(mountpoint: Path, *, ro: bool) -> bool:
    """Remount a :func:`tmpfs` read-only or read-write; True if it worked."""
    option = "remount,ro" if ro else "remount,rw"
    done = subprocess.run(
        ["mount", "-o", option, str(mountpoint)], capture_output=True, timeout=30, check=False
    )
    return done.returncode == 0


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*.tmp") if p.is_file()]


def session_files(root: Path, sid: str) -> list[Path]:
    """Every file kept for session *sid* in its shard (snapshot, backups, journal...)."""
    return sorted(
        p
        for p in (root / "sessions").rglob(f"{session_stem(root, sid)}*")
        # client-index markers are empty: nothing in them to damage
        if p.is_file() and not p.name.endswith((".tmp", ".ref"))
    )


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out

"""Shared pieces of the command line: exit codes, parent parsers, output helpers.

Private to :mod:`stuisession.cli`; the sub-command modules import from here.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from stuisession.errors import StuiSessionError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2

DEFAULT_BIND = "tcp://127.0.0.1:5555"
DEFAULT_STORE = "./.stuisession/"

log = logging.getLogger("stuisession.cli")

Command = Callable[[argparse.Namespace], int]


class UsageError(Exception):
    """A bad argument found after parsing (exit code 2)."""


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def log_level(text: str) -> int:
    level = logging.getLevelName(text.upper())
    if not isinstance(level, int):
        raise argparse.ArgumentTypeError(
            f"unknown log level {text!r} (DEBUG, INFO, WARNING, ERROR, CRITICAL)"
        )
    return level


# -- parent parsers -------------------------------------------------------------------
def common_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--log-level",
        type=log_level,
        # SUPPRESS: a value given before the sub-command (the top-level flag) stands
        default=argparse.SUPPRESS,
        metavar="LEVEL",
        help="DEBUG, INFO (default), WARNING, ERROR",
    )
    return parent


def store_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--store",
        default=DEFAULT_STORE,
        metavar="PATH",
        help=f"file store directory (default {DEFAULT_STORE}; created if missing)",
    )
    return parent


def policy_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("session policy")
    group.add_argument(
        "--timeout",
        type=positive_int,
        metavar="SECONDS",
        help="idle timeout of new sessions (default 3600)",
    )
    group.add_argument(
        "--max-sessions-per-client",
        type=positive_int,
        metavar="N",
        help="active sessions one client may hold (default 5)",
    )
    group.add_argument(
        "--cleanup-interval",
        type=positive_int,
        metavar="SECONDS",
        help="seconds between expiry sweeps (default 300)",
    )
    return parent


# -- admin subcommands: parsers --------------------------------------------------------
def admin_store_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--store",
        default=DEFAULT_STORE,
        metavar="PATH_OR_URL",
        help=f"a file store directory (PATH or file:PATH) or a redis://, rediss://, "
        f"unix:// or redis+cluster://HOST:PORT[,HOST:PORT...] URL (?durability=aof or "
        f"?durability=replicas=N; default {DEFAULT_STORE}); never created by admin commands",
    )
    parent.add_argument(
        "--key-file",
        metavar="PATH",
        help="the keyring (default $STUISESSION_KEYRING, else <store>/keyring.json for a "
        "file store; a Redis store needs one of the two)",
    )
    parent.add_argument(
        "--redis-prefix",
        default="stuisession",
        metavar="PREFIX",
        help="key prefix of a Redis store (default stuisession)",
    )
    return parent


def json_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--json", action="store_true", help="print machine-readable JSON")
    return parent


def progress_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--progress",
        action="store_true",
        help="draw a progress bar on stderr even when it is not a terminal",
    )
    return parent


def audit_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--audit",
        metavar="PATH",
        help="audit log to record to (default: audit.log in a file store, none for Redis; "
        "'off' disables it)",
    )


def admin_parents(*extra: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parents of an admin sub-command: logging, the store options, then *extra*."""
    return [common_parent(), admin_store_parent(), *extra]


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


# -- helpers shared by subcommands ----------------------------------------------------
def setup_logging(level: int) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("stuisession").setLevel(level)


def policy(args: argparse.Namespace) -> Any:
    from stuisession.policy import Policy

    fields = {
        "session_timeout": args.timeout,
        "max_sessions_per_client": args.max_sessions_per_client,
        "cleanup_interval": args.cleanup_interval,
    }
    try:
        return Policy(**{k: v for k, v in fields.items() if v is not None})
    except StuiSessionError as exc:
        raise UsageError(exc.message) from None


class Fail(Exception):
    """A runtime failure with a message for the user (exit code 1)."""


# -- admin subcommands: output helpers -----------------------------------------------
def clean(value: object) -> str:
    """*value* as one line of text: control and other unprintable characters escaped."""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = "-" if value is None else str(value)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] if ch != "\\" else ch for ch in text)


def table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], right: Sequence[int] = ()
) -> str:
    """An aligned text table: a header line, then one line per row."""
    cells = [[clean(c) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(widths[i]) if i in right else v.ljust(widths[i]) for i, v in enumerate(values)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(list(headers)), *(line(r) for r in cells)])


def kv_table(pairs: Sequence[tuple[str, object]]) -> str:
    """Aligned ``key  value`` lines."""
    width = max((len(k) for k, _ in pairs), default=0)
    return "\n".join(f"{k.ljust(width)}  {clean(v)}".rstrip() for k, v in pairs)


def print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=True))


def iso(ts: float | None) -> str | None:
    from stuisession.clock import isoformat

    return None if ts is None else isoformat(ts)


def short(session_id: str) -> str:
    return session_id[:16] + "…"


class ProgressBar:
    """``\\r[#####     ] 123/10000`` on stderr, redrawn at most ten times a second."""

    def __init__(self, total: int, enabled: bool, label: str = "", width: int = 30) -> None:
        self.total = total
        self.enabled = enabled
        self.label = label
        self.width = width
        self._last = 0.0
        self._drawn = False

    def __call__(self, done: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if done < self.total and now - self._last < 0.1:
            return
        self._last = now
        filled = self.width * done // self.total if self.total else self.width
        bar = "#" * filled + " " * (self.width - filled)
        sys.stderr.write(f"\r{self.label}[{bar}] {done}/{self.total}")
        sys.stderr.flush()
        self._drawn = True

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._drawn:
            sys.stderr.write("\n")
            sys.stderr.flush()


def progress(args: argparse.Namespace, total: int, label: str) -> ProgressBar:
    enabled = bool(getattr(args, "progress", False)) or sys.stderr.isatty()
    return ProgressBar(total, enabled, label)


class DeferredInterrupt:
    """Context manager: SIGINT sets ``requested`` instead of raising (main thread only).

    Lets a loop finish the item it is on and stop between items.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True

    def __enter__(self) -> DeferredInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)


# -- admin subcommands: helpers ---------------------------------------------------------
def admin_store(args: argparse.Namespace, key_file: str | None = None) -> Any:
    from stuisession.admin import core

    options: dict[str, Any] = {}
    if core.is_redis_spec(args.store):
        options["prefix"] = args.redis_prefix
    return core.open_store(args.store, key_file=key_file or args.key_file, **options)


def admin_audit(args: argparse.Namespace, store: Any) -> Any:
    from stuisession.admin import core
    from stuisession.security.audit import AuditLog

    if args.audit == "off":
        return None
    if args.audit:
        return AuditLog(args.audit, keyring=store.codec.keyring)
    directory = core.store_directory(args.store)
    if directory is None:
        return None
    return AuditLog(directory / "audit.log", keyring=store.codec.keyring)


def record_fields(info: Any, now: float) -> dict[str, Any]:
    from stuisession.admin import core

    return {
        "session_id": info.session_id,
        "client_id": info.client_id,
        "state": core.session_state_name(info, now),
        "status": info.status.value,
        "created_at": iso(info.created_at),
        "last_accessed": iso(info.last_accessed),
        "last_modified": iso(info.last_modified),
        "expires_at": iso(info.expires_at),
        "absolute_expires_at": iso(info.absolute_expires_at),
        "timeout": info.timeout,
        "revision": info.revision,
        "token_generation": info.token_generation,
    }

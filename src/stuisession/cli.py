"""The ``stuisession`` command (also ``python -m stuisession``).

Each subcommand is registered by a ``_add_<name>`` function that builds its
parser and sets ``func``: a callable taking the parsed arguments and
returning an exit code. Shared options (the store, logging) come from parent
parsers so that future subcommands (``list``, ``show``, ``gc``, ...) accept
them the same way.

Exit codes: 0 success, 1 runtime error (e.g. address in use, unreadable
store), 2 usage error.
"""

from __future__ import annotations

import argparse
import errno
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from ._version import __version__
from .errors import StuiSessionError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2

DEFAULT_BIND = "tcp://127.0.0.1:5555"
DEFAULT_STORE = "./.stuisession/"

log = logging.getLogger("stuisession.cli")

Command = Callable[[argparse.Namespace], int]


class UsageError(Exception):
    """A bad argument found after parsing (exit code 2)."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def _log_level(text: str) -> int:
    level = logging.getLevelName(text.upper())
    if not isinstance(level, int):
        raise argparse.ArgumentTypeError(
            f"unknown log level {text!r} (DEBUG, INFO, WARNING, ERROR, CRITICAL)"
        )
    return level


# -- parent parsers -------------------------------------------------------------------
def _common_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--log-level",
        type=_log_level,
        default=logging.INFO,
        metavar="LEVEL",
        help="DEBUG, INFO (default), WARNING, ERROR",
    )
    return parent


def _store_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--store",
        default=DEFAULT_STORE,
        metavar="PATH",
        help=f"file store directory (default {DEFAULT_STORE}; created if missing)",
    )
    return parent


def _policy_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("session policy")
    group.add_argument(
        "--timeout",
        type=_positive_int,
        metavar="SECONDS",
        help="idle timeout of new sessions (default 3600)",
    )
    group.add_argument(
        "--max-sessions-per-client",
        type=_positive_int,
        metavar="N",
        help="active sessions one client may hold (default 5)",
    )
    group.add_argument(
        "--cleanup-interval",
        type=_positive_int,
        metavar="SECONDS",
        help="seconds between expiry sweeps (default 300)",
    )
    return parent


# -- parser ---------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="stuisession",
        description="Durable, secure sessions for STUI: the ZeroMQ bridge and store tools.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    parents = {
        "common": _common_parent(),
        "store": _store_parent(),
        "policy": _policy_parent(),
    }
    for add in _SUBCOMMANDS:
        add(sub, parents)
    return parser


def _add_serve(sub: Any, parents: dict[str, argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve",
        parents=[parents["common"], parents["store"], parents["policy"]],
        help="run the ZeroMQ bridge server",
        description="Serve the STUI session protocol on a ZeroMQ ROUTER socket "
        "(wire-compatible with upstream REQ clients). Stops cleanly on SIGINT/SIGTERM.",
    )
    p.add_argument(
        "--bind",
        default=DEFAULT_BIND,
        metavar="ENDPOINT",
        help=f"ZeroMQ endpoint to bind (default {DEFAULT_BIND}; never a public interface)",
    )
    p.add_argument(
        "--upstream",
        metavar="ENDPOINT",
        help="the Pharo STUIServer (REP) to forward non-session requests to, "
        "e.g. tcp://127.0.0.1:5556 (default: none, such requests get a 'no backend' error)",
    )
    p.add_argument(
        "--upstream-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="seconds to wait for the Pharo image before an UpstreamError (default 30)",
    )
    p.add_argument("--workers", type=_positive_int, default=8, help="worker threads (default 8)")
    p.add_argument(
        "--max-pending",
        type=_positive_int,
        default=1024,
        help="queued requests before new ones get a Busy error (default 1024)",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="a connection silent this long counts as gone (default 60)",
    )
    p.add_argument(
        "--audit",
        metavar="PATH",
        help="audit log file (default: audit.log in a file store; 'off' disables it)",
    )
    p.add_argument(
        "--key-file",
        metavar="PATH",
        help="keyring file for a Redis store (default $STUISESSION_KEYRING, else "
        "./.stuisession/keyring.json, created 0600); every bridge sharing the store needs it",
    )
    p.add_argument(
        "--config",
        metavar="TOML",
        help="policy options from a TOML file ([policy] table); STUISESSION_* environment "
        "variables override it, command-line options override both",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="strict mode: requests must carry the resume token issued with the session",
    )
    p.set_defaults(func=_cmd_serve)


#: subcommand registrars, in help order; add new ones here
_SUBCOMMANDS: list[Callable[[Any, dict[str, argparse.ArgumentParser]], None]] = [_add_serve]


# -- helpers shared by subcommands ----------------------------------------------------
def _setup_logging(level: int) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("stuisession").setLevel(level)


def _policy(args: argparse.Namespace) -> Any:
    from .policy import Policy

    fields = {
        "session_timeout": args.timeout,
        "max_sessions_per_client": args.max_sessions_per_client,
        "cleanup_interval": args.cleanup_interval,
    }
    try:
        return Policy(**{k: v for k, v in fields.items() if v is not None})
    except StuiSessionError as exc:
        raise UsageError(exc.message) from None


def _open_store(path: str) -> Any:
    from .stores.file import FileStore

    return FileStore(path)


# -- serve ----------------------------------------------------------------------------
def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        from .server import BridgeServer, _zmq

        zmq = _zmq()
    except ImportError as exc:
        raise _Fail(str(exc)) from None
    import attrs

    from .config import load_policy
    from .protocol import ProtocolHandler

    overrides = attrs.asdict(_policy(args), recurse=False)
    defaults = attrs.asdict(type(_policy(args))(), recurse=False)
    base = load_policy(args.config)
    # options given on the command line win over the file and the environment
    changed = {k: v for k, v in overrides.items() if v != defaults[k]}
    policy = attrs.evolve(base, **changed)
    if args.strict:
        policy = attrs.evolve(policy, auth_mode="strict")
    store = _serve_store(args.store, args.key_file)
    upstream = None
    try:
        audit = _serve_audit(args, store)
        handler = ProtocolHandler(store, policy, audit=audit)
        if args.upstream:
            from .forwarding import ZmqUpstream

            upstream = ZmqUpstream(args.upstream, timeout=args.upstream_timeout)
        try:
            server = BridgeServer(
                handler,
                args.bind,
                upstream=upstream,
                workers=args.workers,
                max_pending=args.max_pending,
                idle_timeout=args.idle_timeout,
            )
        except zmq.ZMQError as exc:
            if exc.errno in (errno.EINVAL, errno.EPROTONOSUPPORT):
                raise UsageError(f"invalid --bind endpoint {args.bind!r}: {exc}") from None
            raise _Fail(f"cannot bind {args.bind}: {exc}") from None
        with server:
            print(
                f"stuisession bridge listening on {server.bound_endpoint} (store: {args.store})",
                file=sys.stderr,
                flush=True,
            )
            with _SignalStop(server.stop):
                server.serve_forever()
        log.info("bridge stopped")
    finally:
        if upstream is not None:
            upstream.close()
        store.close()
    return EXIT_OK


def _serve_store(spec: str, key_file: str | None = None) -> Any:
    """A store from ``--store``: a directory, ``file:PATH``, or ``redis://``/``rediss://`` URL."""
    if spec.startswith(("redis://", "rediss://", "unix://")):
        from .keys import Keyring
        from .stores.redis import RedisStore

        ring = None if key_file else Keyring.from_env()
        if ring is None:
            ring = Keyring.load_or_create(key_file or str(Path(DEFAULT_STORE) / "keyring.json"))
        return RedisStore.from_url(spec, keyring=ring)
    return _open_store(spec.removeprefix("file:"))


def _serve_audit(args: argparse.Namespace, store: Any) -> Any:
    from .audit import AuditLog
    from .stores.file import FileStore

    if args.audit == "off":
        return None
    if args.audit:
        return AuditLog(args.audit, keyring=store.codec.keyring)
    if isinstance(store, FileStore):
        return AuditLog(Path(store.root) / "audit.log", keyring=store.codec.keyring)
    return None


class _SignalStop:
    """Context manager: SIGINT/SIGTERM call *stop* (only possible in the main thread)."""

    def __init__(self, stop: Callable[[], None]) -> None:
        self._stop = stop
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        self._stop()

    def __enter__(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


class _Fail(Exception):
    """A runtime failure with a message for the user (exit code 1)."""


# -- entry point ----------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (0 ok, 1 error, 2 usage)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help, --version and bad usage
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    _setup_logging(args.log_level)
    func: Command = args.func
    prefix = f"{parser.prog} {args.command}: error:"
    try:
        return func(args)
    except UsageError as exc:
        print(f"{prefix} {exc}", file=sys.stderr)
        return EXIT_USAGE
    except _Fail as exc:
        print(f"{prefix} {exc}", file=sys.stderr)
    except StuiSessionError as exc:
        print(f"{prefix} {exc.error_type}: {exc.message}", file=sys.stderr)
    except OSError as exc:
        print(f"{prefix} {exc}", file=sys.stderr)
    except KeyboardInterrupt:  # before the signal handlers were installed
        return 130
    return EXIT_ERROR

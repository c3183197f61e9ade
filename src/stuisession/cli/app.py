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
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from stuisession._version import __version__
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
    p.add_argument(
        "--curve-secret",
        metavar="FILE",
        help="serve CurveZMQ with this server key pair (a .key_secret file, mode 0600; "
        "make one with 'keys curve-server'); needs --curve-clients",
    )
    p.add_argument(
        "--curve-clients",
        metavar="FILE_OR_DIR",
        help="the allowed client keys and the client ids each may act as: a TOML file "
        "([[client]] public_key, client_ids, operator) or a directory of *.toml files "
        "and <client_id>.key certificates; re-read when it changes or on SIGHUP",
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
        help="keyring file (default $STUISESSION_KEYRING, else keyring.json in a file store, "
        "./.stuisession/keyring.json for Redis; created 0600); every bridge sharing the "
        "store needs it",
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


# -- admin subcommands: parsers --------------------------------------------------------
def _admin_store_parent() -> argparse.ArgumentParser:
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


def _json_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--json", action="store_true", help="print machine-readable JSON")
    return parent


def _progress_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--progress",
        action="store_true",
        help="draw a progress bar on stderr even when it is not a terminal",
    )
    return parent


def _audit_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--audit",
        metavar="PATH",
        help="audit log to record to (default: audit.log in a file store, none for Redis; "
        "'off' disables it)",
    )


def _admin_parents(
    parents: dict[str, argparse.ArgumentParser], *extra: argparse.ArgumentParser
) -> list[argparse.ArgumentParser]:
    return [parents["common"], _admin_store_parent(), *extra]


def _add_list(sub: Any, parents: dict[str, argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "list",
        parents=_admin_parents(parents, _json_parent()),
        help="list the stored sessions (records only, never state contents)",
        description="List the sessions of a store: id (shortened), client, created, last "
        "access, snapshot size and state (active, closed, expired). Only records are read.",
    )
    p.add_argument("--client", metavar="ID", help="only the sessions of this client id")
    p.set_defaults(func=_cmd_list)


def _add_show(sub: Any, parents: dict[str, argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "show",
        parents=_admin_parents(parents, _json_parent()),
        help="show one session's record and a summary of its state (no values)",
        description="Show a session's record and counts over its state: never values, "
        "never secrets. The snapshot is read without side effects (no backup fallback).",
    )
    p.add_argument(
        "session_id",
        metavar="SESSION_ID",
        help="the session id, or a unique prefix of 12+ characters as `list` shows it",
    )
    p.set_defaults(func=_cmd_show)


def _add_verify(sub: Any, parents: dict[str, argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "verify",
        parents=_admin_parents(parents, _json_parent(), _progress_parent()),
        help="check every snapshot (and every backup of a file store) fully",
        description="Check every snapshot fully (tags, decryption, decompression, schema); "
        "in a file store every backup <id>.snap.N too. Reads only. Exit 1 if any fails.",
    )
    p.set_defaults(func=_cmd_verify)


def _add_gc(sub: Any, parents: dict[str, argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "gc",
        parents=_admin_parents(parents, _json_parent()),
        help="delete expired, closed and past-retention sessions",
        description="Run the expiry sweep once: delete closed and expired sessions and "
        "those idle longer than the retention. Ctrl-C stops between sessions (exit 130).",
    )
    p.add_argument("--dry-run", action="store_true", help="only list what would be deleted")
    p.add_argument(
        "--timeout",
        type=_positive_int,
        metavar="SECONDS",
        help="the policy's idle timeout (default 3600, lowered to --retention if above it); "
        "sessions keep the timeout they were created with",
    )
    p.add_argument(
        "--retention",
        type=_positive_int,
        metavar="SECONDS",
        help="delete sessions idle longer than this whatever their timeout (default 30 days)",
    )
    _audit_option(p)
    p.set_defaults(func=_cmd_gc)


def _add_export(sub: Any, parents: dict[str, argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "export",
        parents=_admin_parents(parents, _json_parent()),
        help="copy every verified snapshot into a directory, with manifest.json",
        description="Copy every verified snapshot (still sealed) into DIR (created 0700) and "
        "write DIR/manifest.json ({session_id: sha256}). Imports into any backend that "
        "shares the keyring.",
    )
    p.add_argument("directory", metavar="DIR")
    p.set_defaults(func=_cmd_export)


def _add_import(sub: Any, parents: dict[str, argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "import",
        parents=_admin_parents(parents, _json_parent(), _progress_parent()),
        help="load an exported directory into the store",
        description="Check every file of an export against manifest.json and the store's "
        "keyring (nothing is imported if one fails), then create each session; ids already "
        "in the store are skipped.",
    )
    p.add_argument("directory", metavar="DIR")
    p.set_defaults(func=_cmd_import)


def _add_keys(sub: Any, parents: dict[str, argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "keys",
        help="rotate or list the keys of the keyring",
        description="Key management. Key material is never printed.",
    )
    actions = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    r = actions.add_parser(
        "rotate",
        parents=_admin_parents(parents, _json_parent(), _progress_parent()),
        help="add a new current key and re-seal every session with it",
        description="Add a new current key, save the keyring (0600) to --key-file (default "
        "<store>/keyring.json; required for Redis), then re-seal every session under it. "
        "Old keys stay to read backups and older audit lines. Restart running bridges.",
    )
    _audit_option(r)
    r.set_defaults(func=_cmd_keys_rotate)
    ls = actions.add_parser(
        "list",
        parents=_admin_parents(parents, _json_parent()),
        help="list the key ids and which one is current",
        description="List the key ids of the keyring and mark the current one.",
    )
    ls.set_defaults(func=_cmd_keys_list)
    for role in ("server", "client"):
        c = actions.add_parser(
            f"curve-{role}",
            parents=[parents["common"]],
            help=f"make a CurveZMQ key pair for the {role}",
            description=f"Write NAME.key (public) and NAME.key_secret (mode 0600) for the "
            f"{role} with zmq.auth.create_certificates. Refuses to overwrite.",
        )
        c.add_argument("--out", required=True, metavar="DIR", help="directory to write to")
        c.add_argument(
            "--name",
            default="server" if role == "server" else None,
            required=role == "client",
            help="file name stem"
            + (" (default server)" if role == "server" else " (e.g. the client id)"),
        )
        c.set_defaults(func=_cmd_keys_curve)


def _add_audit(sub: Any, parents: dict[str, argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "audit",
        help="check the audit log",
        description="Audit log tools.",
    )
    actions = p.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    v = actions.add_parser(
        "verify",
        parents=_admin_parents(parents, _json_parent()),
        help="verify the chain of MACs of the audit log and its head file",
        description="Verify every line of the audit log (MAC, sequence, chain) and its head "
        "file. Exit 1 at the first bad line.",
    )
    v.add_argument(
        "--log",
        metavar="PATH",
        help="the audit log (default <store>/audit.log; required for a Redis store)",
    )
    v.set_defaults(func=_cmd_audit_verify)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def _add_status(sub: Any, parents: dict[str, argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "status",
        parents=[parents["common"], _json_parent()],
        help="ask a running bridge for its statistics",
        description="Send get_session_statistics to a running bridge and print the reply. "
        "Exit 1 if there is no reply within --timeout.",
    )
    p.add_argument(
        "--endpoint",
        default=DEFAULT_BIND,
        metavar="ENDPOINT",
        help=f"the bridge's ZeroMQ endpoint (default {DEFAULT_BIND})",
    )
    p.add_argument(
        "--timeout",
        type=_positive_float,
        default=2.0,
        metavar="SECONDS",
        help="seconds to wait for the reply (default 2)",
    )
    p.add_argument(
        "--curve-server-key",
        metavar="FILE",
        help="connect with CurveZMQ: the bridge's public key file (server.key)",
    )
    p.add_argument(
        "--curve-secret",
        metavar="FILE",
        help="this client's key pair (.key_secret file, mode 0600), with --curve-server-key",
    )
    p.set_defaults(func=_cmd_status)


#: subcommand registrars, in help order; add new ones here
_SUBCOMMANDS: list[Callable[[Any, dict[str, argparse.ArgumentParser]], None]] = [
    _add_serve,
    _add_list,
    _add_show,
    _add_verify,
    _add_gc,
    _add_export,
    _add_import,
    _add_keys,
    _add_audit,
    _add_status,
]


# -- helpers shared by subcommands ----------------------------------------------------
def _setup_logging(level: int) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("stuisession").setLevel(level)


def _policy(args: argparse.Namespace) -> Any:
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


# -- serve ----------------------------------------------------------------------------
def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        from stuisession.bridge.server import BridgeServer, _zmq

        zmq = _zmq()
    except ImportError as exc:
        raise _Fail(str(exc)) from None
    import attrs

    from stuisession.config import load_policy
    from stuisession.protocol.handler import ProtocolHandler

    overrides = attrs.asdict(_policy(args), recurse=False)
    defaults = attrs.asdict(type(_policy(args))(), recurse=False)
    base = load_policy(args.config)
    # options given on the command line win over the file and the environment
    changed = {k: v for k, v in overrides.items() if v != defaults[k]}
    policy = attrs.evolve(base, **changed)
    if args.strict:
        policy = attrs.evolve(policy, auth_mode="strict")
    from stuisession.admin.core import open_store

    store = open_store(args.store, key_file=args.key_file, create=True)
    upstream = None
    try:
        audit = _serve_audit(args, store)
        handler = ProtocolHandler(store, policy, audit=audit)
        if args.upstream:
            from stuisession.bridge.forwarding import ZmqUpstream

            upstream = ZmqUpstream(args.upstream, timeout=args.upstream_timeout)
        curve = _serve_curve(args)
        try:
            server = BridgeServer(
                handler,
                args.bind,
                upstream=upstream,
                workers=args.workers,
                max_pending=args.max_pending,
                idle_timeout=args.idle_timeout,
                curve=curve,
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
            durability = getattr(store, "durability", None)
            if durability:
                print(f"store durability: {durability}", file=sys.stderr, flush=True)
            _announce_transport(server.bound_endpoint, curve)
            with _SignalStop(server.stop), _ReloadOnHangup(curve):
                server.serve_forever()
        log.info("bridge stopped")
    finally:
        if upstream is not None:
            upstream.close()
        store.close()
    return EXIT_OK


def _serve_curve(args: argparse.Namespace) -> Any:
    """The CURVE configuration of ``serve`` (None: plaintext)."""
    if (args.curve_secret is None) != (args.curve_clients is None):
        raise UsageError("--curve-secret and --curve-clients go together")
    if args.curve_secret is None:
        return None
    from stuisession.bridge.curve import CurveConfig

    return CurveConfig.from_files(args.curve_secret, args.curve_clients)


def _announce_transport(endpoint: str, curve: Any) -> None:
    from stuisession.bridge.curve import is_loopback_endpoint

    if curve is not None:
        print(
            f"CurveZMQ: on; {len(curve.allow_list)} client key(s) allowed",
            file=sys.stderr,
            flush=True,
        )
    elif not is_loopback_endpoint(endpoint):
        print(
            "\n*** SECURITY WARNING: PLAINTEXT on a non-loopback address "
            f"({endpoint}). Anyone who can reach it can send requests, and session ids "
            "and tokens cross the network in clear. Use --curve-secret and "
            "--curve-clients, or bind 127.0.0.1. ***\n",
            file=sys.stderr,
            flush=True,
        )


class _ReloadOnHangup:
    """SIGHUP re-reads the CURVE allow-list while serving (no-op without CURVE)."""

    def __init__(self, curve: Any) -> None:
        self._curve = curve
        self._previous: Any = None

    def __enter__(self) -> None:
        if self._curve is not None and hasattr(signal, "SIGHUP"):
            self._previous = signal.signal(signal.SIGHUP, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self._curve.allow_list.reload()

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)


def _cmd_keys_curve(args: argparse.Namespace) -> int:
    from stuisession.bridge.curve import generate_keypair

    try:
        public, secret = generate_keypair(args.out, args.name)
    except FileExistsError as exc:
        raise _Fail(str(exc)) from None
    print(f"public key: {public}\nsecret key: {secret} (mode 0600: keep it private)")
    return EXIT_OK


def _serve_audit(args: argparse.Namespace, store: Any) -> Any:
    from stuisession.security.audit import AuditLog

    if args.audit == "off":
        return None
    if args.audit:
        return AuditLog(args.audit, keyring=store.codec.keyring)
    directory = store.local_directory
    if directory is not None:
        return AuditLog(Path(directory) / "audit.log", keyring=store.codec.keyring)
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


# -- admin subcommands: output helpers -----------------------------------------------
def _clean(value: object) -> str:
    """*value* as one line of text: control and other unprintable characters escaped."""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = "-" if value is None else str(value)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] if ch != "\\" else ch for ch in text)


def _table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], right: Sequence[int] = ()
) -> str:
    """An aligned text table: a header line, then one line per row."""
    cells = [[_clean(c) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(widths[i]) if i in right else v.ljust(widths[i]) for i, v in enumerate(values)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(list(headers)), *(line(r) for r in cells)])


def _kv_table(pairs: Sequence[tuple[str, object]]) -> str:
    """Aligned ``key  value`` lines."""
    width = max((len(k) for k, _ in pairs), default=0)
    return "\n".join(f"{k.ljust(width)}  {_clean(v)}".rstrip() for k, v in pairs)


def _print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=True))


def _iso(ts: float | None) -> str | None:
    from stuisession.clock import isoformat

    return None if ts is None else isoformat(ts)


def _short(session_id: str) -> str:
    return session_id[:16] + "…"


class _ProgressBar:
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

    def __enter__(self) -> _ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._drawn:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _progress(args: argparse.Namespace, total: int, label: str) -> _ProgressBar:
    enabled = bool(getattr(args, "progress", False)) or sys.stderr.isatty()
    return _ProgressBar(total, enabled, label)


class _DeferredInterrupt:
    """Context manager: SIGINT sets ``requested`` instead of raising (main thread only).

    Lets a loop finish the item it is on and stop between items.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True

    def __enter__(self) -> _DeferredInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)


# -- admin subcommands: helpers ---------------------------------------------------------
def _admin_store(args: argparse.Namespace, key_file: str | None = None) -> Any:
    from stuisession.admin import core

    options: dict[str, Any] = {}
    if core.is_redis_spec(args.store):
        options["prefix"] = args.redis_prefix
    return core.open_store(args.store, key_file=key_file or args.key_file, **options)


def _admin_audit(args: argparse.Namespace, store: Any) -> Any:
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


def _record_fields(info: Any, now: float) -> dict[str, Any]:
    from stuisession.admin import core

    return {
        "session_id": info.session_id,
        "client_id": info.client_id,
        "state": core.session_state_name(info, now),
        "status": info.status.value,
        "created_at": _iso(info.created_at),
        "last_accessed": _iso(info.last_accessed),
        "last_modified": _iso(info.last_modified),
        "expires_at": _iso(info.expires_at),
        "absolute_expires_at": _iso(info.absolute_expires_at),
        "timeout": info.timeout,
        "revision": info.revision,
        "token_generation": info.token_generation,
    }


# -- list -------------------------------------------------------------------------------
def _cmd_list(args: argparse.Namespace) -> int:
    from stuisession.admin import core

    store = _admin_store(args)
    try:
        now = time.time()
        rows = sorted(
            core.iter_session_rows(store, client_id=args.client),
            key=lambda r: (r[0].created_at, r[0].session_id),
        )
    finally:
        store.close()
    records: list[dict[str, Any]] = [
        {
            "session_id": info.session_id,
            "client_id": info.client_id,
            "created_at": _iso(info.created_at),
            "last_accessed": _iso(info.last_accessed),
            "size": size,
            "state": core.session_state_name(info, now),
            "revision": info.revision,
        }
        for info, size in rows
    ]
    if args.json:
        _print_json({"count": len(records), "sessions": records})
        return EXIT_OK
    if not records:
        print("no sessions")
        return EXIT_OK
    headers = ["SESSION", "CLIENT", "CREATED", "LAST ACCESS", "SIZE", "STATE"]
    table = [
        [
            _short(r["session_id"]),
            r["client_id"],
            r["created_at"],
            r["last_accessed"],
            r["size"],
            r["state"],
        ]
        for r in records
    ]
    print(_table(headers, table, right=[4]))
    counts = {
        s: sum(1 for r in records if r["state"] == s) for s in ("active", "closed", "expired")
    }
    print(
        f"{len(records)} session(s): {counts['active']} active, "
        f"{counts['closed']} closed, {counts['expired']} expired"
    )
    return EXIT_OK


# -- show -------------------------------------------------------------------------------
def _cmd_show(args: argparse.Namespace) -> int:
    from stuisession.admin import core
    from stuisession.errors import IntegrityError

    store = _admin_store(args)
    try:
        session_id = core.resolve_session_id(store, args.session_id)
        try:
            snap = core.read_snapshot(store, session_id)
            summary = core.summarize_snapshot(snap)
        except IntegrityError as exc:
            raise _Fail(
                f"the snapshot failed its check: {exc.message} (run `stuisession verify`; "
                "the bridge falls back to a valid backup when it loads it)"
            ) from None
    finally:
        store.close()
    record = _record_fields(snap.info, time.time())
    snapshot = {
        k: summary.pop(k) for k in ("snapshot_bytes", "schema_version", "key_id", "encrypted")
    }
    if args.json:
        _print_json({"session": record, "snapshot": snapshot, "summary": summary})
        return EXIT_OK
    print(_kv_table(list(record.items())))
    print()
    print(
        _kv_table(
            [
                ("snapshot size", f"{snapshot['snapshot_bytes']} bytes"),
                ("schema version", snapshot["schema_version"]),
                ("key id", snapshot["key_id"]),
                ("encrypted", "yes" if snapshot["encrypted"] else "no"),
            ]
        )
    )
    print()
    keys = summary.pop("session_state_keys")
    pairs: list[tuple[str, object]] = [(k.replace("_", " "), v) for k, v in summary.items()]
    pairs.append(("session_state keys", ", ".join(_clean(k) for k in keys) if keys else "-"))
    print(_kv_table(pairs))
    return EXIT_OK


# -- verify -----------------------------------------------------------------------------
def _cmd_verify(args: argparse.Namespace) -> int:
    store = _admin_store(args)
    try:
        # a file store lists its backup files too (generation > 0)
        items = store.verify_items()
        total = len(items)
        snapshots = sum(1 for f in items if f.generation == 0)
        with _progress(args, total, "verify ") as bar:
            problems = list(store.verify(items, progress=bar))
    finally:
        store.close()
    backups = total - snapshots
    if args.json:
        _print_json(
            {
                "ok": not problems,
                "checked": total,
                "snapshots": snapshots,
                "backups": backups,
                "failures": [
                    {"path": p.path, "session_id": p.session_id, "reason": p.reason}
                    for p in problems
                ],
            }
        )
    else:
        for p in problems:
            print(f"BAD {p.path or p.session_id}: {p.reason}")
        verdict = f"{len(problems)} bad" if problems else "all OK"
        print(f"checked {total} files ({snapshots} snapshots, {backups} backups): {verdict}")
    return EXIT_ERROR if problems else EXIT_OK


# -- gc ---------------------------------------------------------------------------------
def _gc_policy(args: argparse.Namespace) -> Any:
    from stuisession.policy import Policy

    fields: dict[str, Any] = {}
    if args.retention is not None:
        fields["retention"] = args.retention
    if args.timeout is not None:
        fields["session_timeout"] = args.timeout
    elif args.retention is not None:
        fields["session_timeout"] = min(Policy().session_timeout, args.retention)
    try:
        return Policy(**fields)
    except StuiSessionError as exc:
        raise UsageError(exc.message) from None


def _cmd_gc(args: argparse.Namespace) -> int:
    from stuisession.service.core import SessionService
    from stuisession.state.model import SessionStatus

    policy = _gc_policy(args)
    store = _admin_store(args)
    try:
        audit = None if args.dry_run else _admin_audit(args, store)
        service = SessionService(store, policy, audit=audit)
        if args.dry_run:
            return _gc_dry_run(args, service, SessionStatus.CLOSED)
        examined = removed = 0
        interrupted = False
        with _DeferredInterrupt() as stop:
            try:
                while True:
                    if stop.requested:
                        interrupted = True
                        break
                    step = service.sweep_step(max_items=1)
                    examined += step.scanned
                    removed += step.removed
                    if step.done:
                        break
            except KeyboardInterrupt:  # not in the main thread, or a second signal
                interrupted = True
        if audit is not None:
            note = " (interrupted)" if interrupted else ""
            try:
                audit.record("gc", reason=f"removed {removed} of {examined} examined{note}")
            except Exception as exc:
                print(f"warning: could not append to the audit log: {exc}", file=sys.stderr)
    finally:
        store.close()
    if args.json:
        _print_json({"removed": removed, "examined": examined, "interrupted": interrupted})
    elif interrupted:
        print(
            f"interrupted after examining {examined} sessions; removed {removed} "
            "(every delete is atomic: the store is consistent)"
        )
    else:
        print(f"removed {removed} sessions (examined {examined})")
    return 130 if interrupted else EXIT_OK


def _gc_dry_run(args: argparse.Namespace, service: Any, closed: Any) -> int:
    items = []
    for info in service.iter_sweepable():
        now = time.time()
        if info.status is closed:
            reason = "closed"
        elif info.is_expired(now):
            reason = "expired"
        else:
            reason = "retention"
        items.append(
            {
                "session_id": info.session_id,
                "client_id": info.client_id,
                "last_accessed": _iso(info.last_accessed),
                "reason": reason,
            }
        )
    if args.json:
        _print_json({"dry_run": True, "would_remove": len(items), "sessions": items})
        return EXIT_OK
    if items:
        headers = ["SESSION", "CLIENT", "LAST ACCESS", "REASON"]
        rows = [
            [_short(i["session_id"]), i["client_id"], i["last_accessed"], i["reason"]]
            for i in items
        ]
        print(_table(headers, rows))
    print(f"dry run: would remove {len(items)} sessions")
    return EXIT_OK


# -- export / import --------------------------------------------------------------------
def _cmd_export(args: argparse.Namespace) -> int:
    from stuisession.admin import core

    store = _admin_store(args)
    try:
        total = sum(1 for _ in store.ids())
        manifest = core.export_directory(store, args.directory)
    finally:
        store.close()
    missing = max(0, total - len(manifest))
    if args.json:
        _print_json(
            {"directory": str(args.directory), "exported": len(manifest), "not_exported": missing}
        )
    else:
        print(f"exported {len(manifest)} sessions to {args.directory} (manifest.json written)")
        if missing:
            print(
                f"{missing} session(s) not exported: their snapshots failed their check or "
                "they were deleted meanwhile (run `stuisession verify`)"
            )
    return EXIT_ERROR if missing else EXIT_OK


def _cmd_import(args: argparse.Namespace) -> int:
    from stuisession.admin import core

    store = _admin_store(args)
    try:
        total = len(core.read_manifest(args.directory))
        with _progress(args, total, "import ") as bar:
            report = core.import_directory(store, args.directory, progress=bar)
    finally:
        store.close()
    if args.json:
        _print_json({"total": report.total, "imported": report.imported, "skipped": report.skipped})
    else:
        print(
            f"imported {report.imported} of {report.total} sessions "
            f"({report.skipped} already in the store, skipped); checksums verified"
        )
    return EXIT_OK


# -- keys -------------------------------------------------------------------------------
def _cmd_keys_rotate(args: argparse.Namespace) -> int:
    from stuisession.admin import core
    from stuisession.keys import ENV_KEYRING

    directory = core.store_directory(args.store)
    key_file = args.key_file or (None if directory is None else str(directory / "keyring.json"))
    if key_file is None:
        raise UsageError("give --key-file for a Redis store: the rotated keyring is saved there")
    store = _admin_store(args, key_file)
    try:
        audit = _admin_audit(args, store)
        total = sum(1 for _ in store.ids())
        with _progress(args, total, "re-seal ") as bar:
            report = core.rotate_keys(store, key_file=key_file, audit=audit, progress=bar)
    finally:
        store.close()
    if args.json:
        _print_json(
            {
                "new_key_id": report.new_key_id,
                "key_file": key_file,
                "resealed": report.resealed,
                "skipped": report.skipped,
                "failed": len(report.failed),
            }
        )
    else:
        print(f"new current key: {report.new_key_id} (keyring saved to {key_file})")
        print(
            f"re-sealed {report.resealed} sessions, skipped {report.skipped}, "
            f"failed {len(report.failed)}"
        )
        for sid in report.failed:
            print(f"FAILED {_short(sid)} (unreadable or kept changing; run verify)")
    if os.environ.get(ENV_KEYRING):
        print(
            f"note: ${ENV_KEYRING} is set: processes taking the keyring from it need the "
            f"rotated keyring in {key_file}",
            file=sys.stderr,
        )
    print("restart running bridges so that they load the new keyring", file=sys.stderr)
    return EXIT_ERROR if report.failed else EXIT_OK


def _cmd_keys_list(args: argparse.Namespace) -> int:
    from stuisession.admin import core

    ring = core.load_keyring(args.key_file, args.store)
    if args.json:
        _print_json({"current": ring.current_id, "keys": ring.key_ids})
        return EXIT_OK
    rows = [[kid, "yes" if kid == ring.current_id else ""] for kid in ring.key_ids]
    print(_table(["KEY ID", "CURRENT"], rows))
    return EXIT_OK


# -- audit ------------------------------------------------------------------------------
def _cmd_audit_verify(args: argparse.Namespace) -> int:
    from stuisession.admin import core
    from stuisession.security.audit import verify

    directory = core.store_directory(args.store)
    log_path = args.log or (None if directory is None else str(directory / "audit.log"))
    if log_path is None:
        raise UsageError("give --log for a Redis store (it has no audit log of its own)")
    ring = core.load_keyring(args.key_file, args.store)
    report = verify(log_path, ring)
    if args.json:
        _print_json(
            {
                "log": log_path,
                "ok": report.ok,
                "lines": report.lines,
                "last_seq": report.last_seq,
                "first_bad_line": report.first_bad_line,
                "reason": report.reason,
                "torn_tail": report.torn_tail,
            }
        )
    elif report.ok:
        torn = (
            "; an incomplete last line (a crash mid-append) was ignored" if report.torn_tail else ""
        )
        print(f"OK: {log_path}: {report.lines} lines verified (last seq {report.last_seq}){torn}")
    elif report.first_bad_line is None:
        print(f"FAILED: {log_path}: {report.reason}")
    else:
        print(f"FAILED: {log_path}: line {report.first_bad_line}: {report.reason}")
    return EXIT_OK if report.ok else EXIT_ERROR


# -- status -----------------------------------------------------------------------------
def _cmd_status(args: argparse.Namespace) -> int:
    try:
        from stuisession.bridge.server import _zmq

        zmq = _zmq()
    except ImportError as exc:
        raise _Fail(str(exc)) from None
    request = {"id": "stuisession-status", "command": "get_session_statistics", "parameters": {}}
    ms = max(1, int(args.timeout * 1000))
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.REQ)
        _status_curve(args, sock, zmq)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, ms)
        sock.setsockopt(zmq.SNDTIMEO, ms)
        try:
            sock.connect(args.endpoint)
        except zmq.ZMQError as exc:
            raise UsageError(f"invalid --endpoint {args.endpoint!r}: {exc}") from None
        try:
            sock.send(json.dumps(request).encode())
            raw = sock.recv()
        except zmq.Again:
            raise _Fail(
                f"no reply from {args.endpoint} within {args.timeout:g} s "
                "(is the bridge running there?)"
            ) from None
    finally:
        ctx.destroy(linger=0)
    try:
        reply = json.loads(raw)
    except ValueError:
        raise _Fail(f"the reply from {args.endpoint} is not JSON") from None
    if not isinstance(reply, dict) or reply.get("status") != "success":
        error = reply.get("error") if isinstance(reply, dict) else None
        if not isinstance(error, str):
            error = "unexpected reply"
        kind = reply.get("error_type") if isinstance(reply, dict) else None
        prefix = f"{kind}: " if isinstance(kind, str) else ""
        raise _Fail(f"{args.endpoint} answered with an error: {prefix}{_clean(error[:200])}")
    result = reply.get("result")
    if not isinstance(result, dict):
        raise _Fail(f"the reply from {args.endpoint} has no result")
    if args.json:
        _print_json(result)
        return EXIT_OK
    scalars = [(k, v) for k, v in result.items() if not isinstance(v, (list, dict))]
    print(_kv_table(scalars))
    connections = result.get("connections")
    if isinstance(connections, list):
        print()
        if not connections:
            print("no connections")
        else:
            rows = [
                [
                    c.get("identity"),
                    c.get("client_id"),
                    _iso(c["connected_since"])
                    if isinstance(c.get("connected_since"), (int, float))
                    else c.get("connected_since"),
                    c.get("idle_seconds"),
                    c.get("requests"),
                    c.get("sessions"),
                ]
                for c in connections
                if isinstance(c, dict)
            ]
            headers = ["IDENTITY", "CLIENT", "CONNECTED SINCE", "IDLE (S)", "REQUESTS", "SESSIONS"]
            print(_table(headers, rows, right=[3, 4, 5]))
    return EXIT_OK


def _status_curve(args: argparse.Namespace, sock: Any, zmq: Any) -> None:
    if (args.curve_server_key is None) != (args.curve_secret is None):
        raise UsageError("--curve-server-key and --curve-secret go together")
    if args.curve_server_key is None:
        return
    from stuisession.bridge.curve import load_keypair, load_public_key

    public, secret = load_keypair(args.curve_secret)
    sock.setsockopt(zmq.CURVE_SERVERKEY, load_public_key(args.curve_server_key))
    sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, secret)


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

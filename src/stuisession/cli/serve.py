"""The ``serve`` sub-command: run the ZeroMQ bridge."""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from stuisession.bridge.supervisor import default_workers
from stuisession.cli._common import (
    DEFAULT_BIND,
    EXIT_OK,
    Fail,
    UsageError,
    common_parent,
    log,
    policy,
    policy_parent,
    positive_int,
    store_parent,
)
from stuisession.errors import StuiSessionError


def register_serve(sub: Any) -> None:
    """Add the ``serve`` parser(s) to *sub*."""
    p = sub.add_parser(
        "serve",
        parents=[common_parent(), store_parent(), policy_parent()],
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
        "--notify",
        metavar="ENDPOINT",
        help="publish session change notices on this ZeroMQ XPUB endpoint, e.g. "
        "tcp://127.0.0.1:5556 (default: off; subscribers must prove they hold the session, "
        "see docs/notifications.md)",
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
    p.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        metavar="N",
        help="worker processes behind the socket (default: the number of cores; "
        "1 serves from this process)",
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        default=8,
        metavar="N",
        help="request threads in each worker process (default 8)",
    )
    p.add_argument(
        "--max-pending",
        type=positive_int,
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
        "required for Redis; created 0600); every bridge sharing the "
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
    p.set_defaults(handler=cmd_serve, parser=p)


# -- serve ----------------------------------------------------------------------------
def serve_policy(args: argparse.Namespace) -> Any:
    """The policy ``serve`` runs with; a bad value is a :class:`UsageError` (exit 2).

    Precedence, lowest first: the library defaults, the serving defaults
    (:data:`~stuisession.policy.SERVE_DEFAULTS`: the rate limit is on), the
    ``--config`` file, ``STUISESSION_*`` variables, command-line options.
    """
    import attrs

    from stuisession.config import load_policy
    from stuisession.policy import SERVE_DEFAULTS

    cli_policy = policy(args)  # raises UsageError for a bad option value
    overrides = attrs.asdict(cli_policy, recurse=False)
    defaults = attrs.asdict(type(cli_policy)(), recurse=False)
    # options given on the command line win over the file and the environment
    changed = {k: v for k, v in overrides.items() if v != defaults[k]}
    if args.strict:
        changed["auth_mode"] = "strict"
    try:
        base = load_policy(args.config, defaults=SERVE_DEFAULTS)
        return attrs.evolve(base, **changed)
    except StuiSessionError as exc:  # ConfigurationError: a bad value or file
        raise UsageError(exc.message) from None


def _check_bind(zmq: Any, endpoint: str, option: str = "--bind") -> None:
    """Bind a throw-away socket to *endpoint* so that a bad or busy one fails first."""
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            if exc.errno in (errno.EINVAL, errno.EPROTONOSUPPORT):
                raise UsageError(f"invalid {option} endpoint {endpoint!r}: {exc}") from None
            raise Fail(f"cannot bind {endpoint}: {exc}") from None
        sock.close(linger=0)
    finally:
        ctx.destroy(linger=0)


def _check_file_store(directory: Path, key_file: str | None) -> None:
    """Fail unless the store (and key file) can be created or opened: nothing is made."""
    if directory.exists():
        if not directory.is_dir():
            raise Fail(f"--store {directory} exists and is not a directory")
        if not os.access(directory, os.W_OK | os.X_OK):
            raise Fail(f"--store {directory} is not writable")
    else:
        ancestor = directory.absolute().parent
        while not ancestor.exists():
            ancestor = ancestor.parent
        if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
            raise Fail(f"cannot create --store {directory}: {ancestor} is not writable")
    if key_file is not None and os.path.exists(key_file):
        from stuisession.keys import Keyring

        Keyring.load(key_file)  # a bad keyring fails here, before anything is created


def _check_redis(spec: str, key_file: str | None) -> None:
    """Fail unless a keyring is given and the Redis server answers a PING."""
    from stuisession.keys import ENV_KEYRING

    if key_file is None and not os.environ.get(ENV_KEYRING):
        raise UsageError(
            f"give --key-file (or ${ENV_KEYRING}) for a Redis store: every bridge sharing "
            "it needs the same keyring"
        )
    try:
        import redis
    except ImportError as exc:
        raise Fail(
            f"a Redis store needs redis-py (the redis extra): pip install redis: {exc}"
        ) from None
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    from stuisession.errors import ConfigurationError
    from stuisession.stores.redis import parse_cluster_url

    try:
        # options the store itself consumes (durability=...) mean nothing to redis-py
        parts = urlsplit(spec)
        query = [(k, v) for k, v in parse_qsl(parts.query) if k != "durability"]
        url = urlunsplit(parts._replace(query=urlencode(query)))
        if url.partition("://")[0].lower().endswith("+cluster"):
            url = parse_cluster_url(url)[0]  # PING the first startup node
        client = redis.Redis.from_url(url, socket_connect_timeout=2.0, socket_timeout=2.0)
        try:
            client.ping()
        finally:
            client.close()
    except (ValueError, TypeError, ConfigurationError) as exc:
        raise UsageError(f"invalid Redis URL for --store: {exc}") from None
    except redis.RedisError as exc:
        raise Fail(f"cannot reach the Redis store: {exc}") from None


def banner(
    args: argparse.Namespace,
    endpoint: str,
    policy: Any,
    redis_store: bool,
    store_durability: str | None = None,
) -> str:
    """The start line: endpoint, store, mode, durability and the policy in force."""
    if store_durability:
        durability = store_durability
    elif redis_store:
        durability = "as the Redis server's persistence (appendonly/appendfsync) is set"
    else:
        durability = "fsync before every acknowledgement, journal, 2 backups"
    rate = (
        "off"
        if policy.rate_limit is None
        else f"{policy.rate_limit:g}/s per client, burst {policy.rate_burst}"
    )
    lifetime = "none" if policy.absolute_lifetime is None else f"{policy.absolute_lifetime} s"
    return (
        f"stuisession bridge listening on {endpoint}\n"
        f"  store: {'redis ' if redis_store else 'file '}{_display_store(args.store)}\n"
        f"  mode: {policy.auth_mode}; durability: {durability}\n"
        f"  policy: idle timeout {policy.session_timeout} s, absolute lifetime {lifetime}, "
        f"{policy.max_sessions_per_client} sessions per client, "
        f"max message {policy.max_message_size} bytes, "
        f"max snapshot {policy.max_snapshot_size} bytes, rate limit {rate}"
    )


def _display_store(spec: str) -> str:
    # never print a Redis password
    if "://" in spec and "@" in spec:
        scheme, _, rest = spec.partition("://")
        return f"{scheme}://***@{rest.rpartition('@')[2]}"
    return spec


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from stuisession.bridge.server import BridgeServer, _zmq

        zmq = _zmq()
    except ImportError as exc:
        raise Fail(str(exc)) from None
    from stuisession.admin.core import open_store, store_directory
    from stuisession.bridge.workers import favour_short_requests
    from stuisession.protocol.handler import ProtocolHandler

    favour_short_requests()  # small requests never wait 5 ms per GIL turn (issue 17)
    # validate everything before anything is created (directory, key, Redis keys)
    run_policy = serve_policy(args)
    directory = store_directory(args.store)
    if directory is None:
        _check_redis(args.store, args.key_file)
    else:
        _check_file_store(directory, args.key_file)
    if args.audit not in (None, "off") and Path(args.audit).is_dir():
        raise UsageError(f"--audit {args.audit} is a directory")
    _check_bind(zmq, args.bind)
    curve = _serve_curve(args)
    if args.notify is not None:
        _check_bind(zmq, args.notify, "--notify")

    workers = default_workers() if args.workers is None else args.workers
    if workers > 1:
        return _serve_workers(args, workers, run_policy, directory is None, curve)

    store = open_store(args.store, key_file=args.key_file, create=True, **_shards(args.store))
    upstream = None
    try:
        audit = _serve_audit(args, store)
        handler = ProtocolHandler(store, run_policy, audit=audit)
        if args.upstream:
            from stuisession.bridge.forwarding import ZmqUpstream

            upstream = ZmqUpstream(args.upstream, timeout=args.upstream_timeout)
        try:
            server = BridgeServer(
                handler,
                args.bind,
                upstream=upstream,
                workers=args.threads,
                max_pending=args.max_pending,
                idle_timeout=args.idle_timeout,
                curve=curve,
                notify=args.notify,
            )
        except zmq.ZMQError as exc:  # taken between the check and now
            where = args.bind if args.notify is None else f"{args.bind} or {args.notify}"
            raise Fail(f"cannot bind {where}: {exc}") from None
        with server:
            text = banner(
                args,
                server.bound_endpoint,
                run_policy,
                directory is None,
                getattr(store, "durability", None),
            )
            if server.notifier is not None:
                text += f"\n  change notices on {server.notifier.bound_endpoint}"
            print(text, file=sys.stderr, flush=True)
            _announce_transport(server.bound_endpoint, curve)
            with SignalStop(server.stop), _ReloadOnHangup(curve):
                server.serve_forever()
        log.info("bridge stopped")
    finally:
        if upstream is not None:
            upstream.close()
        store.close()
    return EXIT_OK


def _serve_workers(
    args: argparse.Namespace, workers: int, run_policy: Any, redis_store: bool, curve: Any
) -> int:
    """``serve --workers N`` (N > 1): the public socket here, N worker processes behind it.

    With CURVE the handshake (ZAP) and the allow-list stay in this process (SIGHUP
    re-reads it here); the workers get each message's authenticated caller. With
    ``--notify`` the notice socket is here too, fed by the workers' writes (a file
    store) or by Redis Pub/Sub (a Redis store).
    """
    from stuisession.admin.core import open_store

    # create the store (directory, keyring) once, before workers race to do it; it
    # stays open here only for the notice socket's subscription checks
    store = open_store(args.store, key_file=args.key_file, create=True, **_shards(args.store))
    durability = getattr(store, "durability", None)
    try:
        notifier_factory = _parent_notifier(args, store, run_policy, curve)
        if notifier_factory is None:
            store.close()
        return _supervise(
            args,
            workers,
            run_policy=run_policy,
            redis_store=redis_store,
            curve=curve,
            notifier_factory=notifier_factory,
            durability=durability,
        )
    finally:
        store.close()


def _parent_notifier(args: argparse.Namespace, store: Any, run_policy: Any, curve: Any) -> Any:
    """``notifier_factory`` for the supervisor: a Notifier on *store* (None without --notify).

    Its service verifies subscriptions (watch tokens, CURVE identities) and audits
    refusals, as a single bridge's does.
    """
    if args.notify is None:
        return None
    from stuisession.bridge.sockets import open_notifier
    from stuisession.protocol.handler import ProtocolHandler

    handler = ProtocolHandler(store, run_policy, audit=_serve_audit(args, store))
    return lambda context: open_notifier(handler.service, args.notify, context, curve, None)


def _supervise(
    args: argparse.Namespace,
    workers: int,
    *,
    run_policy: Any,
    redis_store: bool,
    curve: Any,
    notifier_factory: Any,
    durability: Any,
) -> int:
    import functools

    from stuisession.bridge.supervisor import Supervisor

    settings = {
        "store": args.store,
        "key_file": args.key_file,
        "audit": args.audit,
        "policy": run_policy,
        "upstream": args.upstream,
        "upstream_timeout": args.upstream_timeout,
        "threads": args.threads,
        "max_pending": args.max_pending,
        "idle_timeout": args.idle_timeout,
    }
    factory = functools.partial(_worker_server, settings)
    try:
        supervisor = Supervisor(
            args.bind,
            workers,
            factory,
            policy=run_policy,
            idle_timeout=args.idle_timeout,
            curve=curve,
            notifier_factory=notifier_factory,
            # a Redis store delivers every process's changes by Pub/Sub already
            forward_notices=not redis_store,
        )
    except Exception as exc:  # zmq.ZMQError: taken between the check and now
        where = args.bind if args.notify is None else f"{args.bind} or {args.notify}"
        raise Fail(f"cannot bind {where}: {exc}") from None
    with supervisor:
        text = banner(args, supervisor.bound_endpoint, run_policy, redis_store, durability)
        if supervisor.notifier is not None:
            text += f"\n  change notices on {supervisor.notifier.bound_endpoint}"
        print(
            f"{text}\n  workers: {workers} processes (and one for large requests)",
            file=sys.stderr,
            flush=True,
        )
        _announce_transport(supervisor.bound_endpoint, curve)
        with SignalStop(supervisor.stop), _ReloadOnHangup(curve):
            supervisor.serve_forever()
    log.info("bridge stopped")
    return EXIT_OK


def _worker_server(settings: dict[str, Any], config: Any, context: Any) -> tuple[Any, Any]:
    """Build one worker's BridgeServer (runs in the worker process)."""
    from stuisession.admin.core import open_store
    from stuisession.bridge.server import BridgeServer
    from stuisession.bridge.workers import favour_short_requests

    favour_short_requests()
    from stuisession.protocol.handler import ProtocolHandler

    args = argparse.Namespace(store=settings["store"], audit=settings["audit"])
    store = open_store(settings["store"], key_file=settings["key_file"], create=True)  # made once
    upstream = None
    try:
        audit = _serve_audit(args, store)
        handler = ProtocolHandler(store, settings["policy"], audit=audit)
        if settings["upstream"]:
            from stuisession.bridge.forwarding import ZmqUpstream

            upstream = ZmqUpstream(settings["upstream"], timeout=settings["upstream_timeout"])
        server = BridgeServer(
            handler,
            config.endpoint,
            context=context,
            upstream=upstream,
            workers=settings["threads"],
            max_pending=settings["max_pending"],
            idle_timeout=settings["idle_timeout"],
            # one worker sweeps expired sessions; the others would repeat its work
            sweep_interval=None if config.sweeper else 365 * 86400.0,
            # the policy's large-request budget is for the whole bridge (bridge/pacing.py)
            pace_share=config.pace_share,
            # behind a CURVE parent: each message carries the caller it authenticated
            forwarded_callers=config.forwarded_callers,
        )
    except BaseException:
        if upstream is not None:
            upstream.close()
        store.close()
        raise

    def cleanup() -> None:
        if upstream is not None:
            upstream.close()
        store.close()

    return server, cleanup


def _shards(spec: str) -> dict[str, Any]:
    """A file store served gets all its shard directories once: no create pays a mkdir."""
    from stuisession.admin.core import store_directory

    return {"make_shards": True} if store_directory(spec) is not None else {}


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
            f"  CurveZMQ: on; {len(curve.allow_list)} client key(s) allowed",
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

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self._curve.allow_list.reload()

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)


def _serve_audit(args: argparse.Namespace, store: Any) -> Any:
    from stuisession.admin.core import store_directory
    from stuisession.security.audit import AuditLog

    if args.audit == "off":
        return None
    if args.audit:
        return AuditLog(args.audit, keyring=store.codec.keyring)
    directory = store_directory(args.store)  # the spec says the kind: no class check
    if directory is not None:
        return AuditLog(directory / "audit.log", keyring=store.codec.keyring)
    return None


class SignalStop:
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


def register(sub: Any) -> None:
    """Add this module's sub-commands to *sub* (an argparse sub-parsers action)."""
    register_serve(sub)

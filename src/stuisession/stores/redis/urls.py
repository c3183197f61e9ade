"""Redis URLs (plain, TLS, unix socket, cluster) and connecting to them."""

from __future__ import annotations

import contextlib
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from stuisession.errors import ConfigurationError, StorageError
from stuisession.stores.redis.errors import RETRY_AFTER_CLUSTER, ErrorMapper

_SCHEMES = ("redis", "rediss", "unix")
_CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
#: query arguments of a store URL that are the store's, not redis-py's
_STORE_QUERY = ("durability", "durability_timeout")


def import_redis() -> Any:
    try:
        import redis
        import redis.cluster
    except ImportError as exc:
        raise ConfigurationError(
            "RedisStore needs the 'redis' package: install the redis extra "
            "(pip install 'stuisession[redis]')"
        ) from exc
    return redis


def is_cluster_url(url: str) -> bool:
    """True for ``redis+cluster://`` and ``rediss+cluster://`` URLs."""
    return url.partition("://")[0].lower() in _CLUSTER_SCHEMES and "://" in url


def parse_cluster_url(url: str) -> tuple[str, list[tuple[str, int]]]:
    """Split ``redis+cluster://[user:pass@]host:port[,host:port...][?options]``.

    Returns a plain ``redis://`` (or ``rediss://``) URL of the first node, with
    the credentials and options (what ``RedisCluster.from_url`` takes), and
    every ``(host, port)`` given (the cluster's startup nodes; the rest of the
    cluster is discovered from them). The port defaults to 6379. A database
    number other than 0 is refused (a cluster has only database 0).
    """
    scheme, sep, rest = url.partition("://")
    base = _CLUSTER_SCHEMES.get(scheme.lower())
    if not sep or base is None:
        raise ConfigurationError("a cluster URL starts with redis+cluster:// or rediss+cluster://")
    netloc, slash, tail = rest.partition("/")
    tail, qmark, query = (slash + tail).partition("?")
    userinfo, at, hosts = netloc.rpartition("@")
    nodes: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, colon, port = item.strip().rpartition(":")
        if not colon:
            host, port = item.strip(), "6379"
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigurationError(f"invalid node {item.strip()!r} in a Redis cluster URL")
        nodes.append((host, int(port)))
    if tail.strip("/") not in ("", "0"):
        raise ConfigurationError("a Redis cluster has only database 0")
    first = f"[{nodes[0][0]}]" if ":" in nodes[0][0] else nodes[0][0]
    single = f"{base}://{userinfo}{at}{first}:{nodes[0][1]}/0" + (qmark + query)
    return single, nodes


def split_store_options(url: str) -> tuple[str, dict[str, str]]:
    """*url* without the store's own query arguments (``durability`` ...), and those."""
    base, qmark, query = url.partition("?")
    if not qmark:
        return url, {}
    pairs = parse_qsl(query, keep_blank_values=True)
    mine = {k: v for k, v in pairs if k in _STORE_QUERY}
    rest = [(k, v) for k, v in pairs if k not in _STORE_QUERY]
    return (base + ("?" + urlencode(rest) if rest else "")), mine


def redact_url(url: str) -> str:
    """*url* with its password (in the user info or a ``password=`` query) replaced by ``***``."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparseable Redis URL>"
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    if password is None and not any(k.lower() == "password" for k, _ in pairs):
        return url
    netloc = parts.netloc
    if password is not None:
        userinfo, _, host = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        netloc = f"{user}:***@{host}"
    query = urlencode([(k, "***" if k.lower() == "password" else v) for k, v in pairs])
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")


def secrets_in(url: str) -> list[str]:
    found: list[str] = []
    with contextlib.suppress(ValueError):
        parts = urlsplit(url)
        if parts.password:
            found.append(parts.password)
        found += [v for k, v in parse_qsl(parts.query) if k.lower() == "password" and v]
    return found


def describe_client(client: Any) -> tuple[str, list[str]]:
    """(a password-free description of a supplied client, its secrets to scrub)."""
    try:
        kw = client.get_connection_kwargs()
    except Exception:  # e.g. RedisCluster, which has no single connection
        return f"<{type(client).__name__}>", []
    secrets = [kw["password"]] if kw.get("password") else []
    if kw.get("path"):
        return f"unix://{kw['path']}?db={kw.get('db', 0)}", secrets
    return f"redis://{kw.get('host')}:{kw.get('port')}/{kw.get('db', 0)}", secrets


def connect(
    redis: Any, url: str, errors: ErrorMapper, socket_timeout: float, connect_timeout: float
) -> Any:
    """A ``redis.Redis`` (or, for a cluster URL, ``RedisCluster``) client for *url*."""
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    if errors.cluster:
        return _connect_cluster(redis, url, errors, socket_timeout, connect_timeout)
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme not in _SCHEMES:
        raise ConfigurationError(
            f"unsupported Redis URL {errors.display_url!r}: use redis://, rediss://, "
            "unix:// or redis+cluster://"
        )
    # a short retry reconnects a pooled connection the server closed (e.g.
    # after a restart); retried writes are safe (the scripts are idempotent)
    retry = Retry(ExponentialBackoff(cap=0.1, base=0.01), 2)
    try:
        return redis.Redis.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
            retry=retry,
            decode_responses=False,
        )
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(
            f"invalid Redis URL {errors.display_url!r}: {errors.scrub(str(exc))}"
        ) from None


def _connect_cluster(
    redis: Any, url: str, errors: ErrorMapper, socket_timeout: float, connect_timeout: float
) -> Any:
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    single, nodes = parse_cluster_url(url)
    cluster = redis.cluster
    try:
        return cluster.RedisCluster(
            url=single,
            startup_nodes=[cluster.ClusterNode(h, p) for h, p in nodes[1:]],
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
            # MOVED/ASK and failovers: a few quick retries, then a StorageError
            retry=Retry(ExponentialBackoff(cap=0.25, base=0.025), 3),
            decode_responses=False,
        )
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(
            f"invalid Redis cluster URL {errors.display_url!r}: {errors.scrub(str(exc))}"
        ) from None
    except (redis.exceptions.RedisError, cluster.RedisClusterException) as exc:
        raise StorageError(
            f"Redis cluster at {errors.display_url} is not reachable: "
            f"{type(exc).__name__}: {errors.scrub(str(exc))}",
            url=errors.display_url,
            retry_after=RETRY_AFTER_CLUSTER,
        ) from None


def check_client(client: Any, errors: ErrorMapper) -> None:
    """Ping *client*: ``ConfigurationError`` for refused credentials, else ``StorageError``."""
    kwargs = getattr(client, "get_connection_kwargs", None)
    if callable(kwargs) and kwargs().get("decode_responses"):
        raise ConfigurationError("RedisStore needs a client with decode_responses=False")
    rexc = errors.redis.exceptions
    url = errors.display_url
    try:
        client.ping()
    except (rexc.AuthenticationError, rexc.AuthorizationError, rexc.NoPermissionError) as exc:
        hint = "" if errors.secrets else " (it needs a password: put it in the URL)"
        raise ConfigurationError(
            f"Redis at {url} refused the credentials{hint}: {errors.scrub(str(exc))}",
            url=url,
        ) from None
    except (rexc.RedisError, rexc.RedisClusterException) as exc:
        raise StorageError(
            f"Redis at {url} is not reachable: {type(exc).__name__}: {errors.scrub(str(exc))}",
            url=url,
        ) from None

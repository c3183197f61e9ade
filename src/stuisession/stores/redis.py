"""A Redis store: sealed snapshots in Redis hashes, compare-and-swap on the server.

Runs on a standalone server or on a Redis Cluster. Key layouts (see
``docs/backends.md``), with ``P`` the store's *prefix*, ``H`` the SHA-256 hex
of a client id and ``T`` a three-character *slot tag* derived from ``H``:

Layout 1 (standalone servers; what stores before 0.x wrote, still the default there)::

    P:s:{<session_id>}        hash  blob, head, rev, client   (TTL = retention)
    P:c:{H}                   zset  session ids of one client  (score: when indexed)
    P:a:{H}                   zset  the client's *active* sessions (score: active until)
    P:all                     zset  every session id (score: when it was indexed)

Layout 2 (required on Redis Cluster, marked by ``P:layout`` = ``2``)::

    P:s:{T}:<session_id>      hash  as above
    P:c:{T}:H                 zset  as above
    P:a:{T}:H                 zset  as above
    P:all                     zset  as above
    P:layout                  string "2"

In layout 2 the part in braces is a Redis Cluster *hash tag* shared by a
client's indexes and -- because :meth:`RedisStore.new_session_id` writes the
client's tag into characters 8-10 of every new session id -- by all of that
client's sessions: they live in one hash slot. Each write (create with the
per-client limit check, update, delete) is therefore one Lua script over keys
of one slot, atomic on a cluster as on one server. Only the global index
``P:all`` lives elsewhere: it is written before a create and after a delete,
never inside a script, and readers skip entries whose session is gone.
Sessions whose id does not carry its client's tag (imported, or created
through the store API with an id of their own) are written by the same script
on their own slot, with their index entries kept by separate commands.

On a standalone server every script gets every key it touches (slots do not
matter there), so layout 1 is as atomic as layout 2.

A write is one Lua script (``cas="lua"``, the default) or a WATCH/MULTI/EXEC
transaction (``cas="watch"``, standalone servers only: refused on a cluster).
Either way the blob, its head and its revision are replaced together, so no
reader ever sees a half-written session. Both are idempotent: a write whose
reply was lost and is sent again is recognised and reported as done rather
than as a conflict.

Durability (``durability=``): ``"none"``; ``"aof"`` (every node must run with
``appendonly yes`` and ``appendfsync always``, checked at start); or
``"replicas=N"`` (each write waits for ``WAIT N`` -- and ``WAITAOF`` on servers
that have it and run AOF -- before it is acknowledged). A write that commits
but does not reach its durability in time raises ``StorageError`` with
``details["reason"] == "durability_unknown"``.

The ``redis`` package is imported only when a store is made: install the
``redis`` extra (``pip install 'stuisession[redis]'``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit

import attrs

from stuisession.codec.snapshot import SnapshotCodec, parse_header
from stuisession.errors import (
    ConfigurationError,
    ConflictError,
    IntegrityError,
    SessionError,
    SessionNotFound,
    StorageError,
)
from stuisession.ids import check_client_id, check_session_id, is_valid_session_id
from stuisession.keys import Keyring
from stuisession.state.model import Session, SessionInfo, SessionStatus
from stuisession.stores.base import (
    ChangeEvent,
    ChangeListener,
    SessionStore,
    StoreStatistics,
)

if TYPE_CHECKING:
    from redis.commands.core import Script

__all__ = [
    "DEFAULT_TTL",
    "DURABILITY_TIMEOUT",
    "RedisStore",
    "client_hash",
    "client_tag",
    "is_cluster_url",
    "parse_cluster_url",
    "redact_url",
]

log = logging.getLogger("stuisession.stores.redis")

#: default retention of a session key after its last write (30 days)
DEFAULT_TTL = 30 * 86400
#: index entries younger than this (seconds) are never pruned: their session
#: may be in the middle of being created
INDEX_GRACE = 300.0
#: default seconds a ``replicas=N`` write waits for its replicas
DURABILITY_TIMEOUT = 2.0
#: ``retry_after`` (seconds) suggested by errors of a cluster in flux / an unreachable server
_RETRY_AFTER_CLUSTER = 1.0
_RETRY_AFTER_CONNECTION = 0.5
_BATCH = 256
_WATCH_ATTEMPTS = 32
#: redirections (MOVED/ASK) and lost script caches followed within one write
_REDIRECTS = 4
_SCHEMES = ("redis", "rediss", "unix")
_CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
#: query arguments of a store URL that are the store's, not redis-py's
_STORE_QUERY = ("durability", "durability_timeout")
_PREFIX_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-:/")
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
#: where a layout-2 session id carries its client's slot tag
_TAG = slice(8, 11)
_LAYOUT_2 = b"2"

# KEYS[1] session hash; optional KEYS[2] client index, KEYS[3] active index,
# KEYS[4] global index (given only when they may be touched atomically: same slot,
# or a standalone server)
# ARGV: expected revision ('' = create), new revision, blob, head, client hash,
#       ttl (0 = none), session id, index score, active until (0 = not active),
#       limit (0 = none), now, change channel, change notice ('' = none)
# -> {1, previous client hash} written | {0, current revision} conflict
#    | {-1, ''} not found | {-2, active count} the client's limit is reached
_PUT_LUA = """
local key = KEYS[1]
local want, rev, blob, sid = ARGV[1], ARGV[2], ARGV[3], ARGV[7]
local cur = redis.call('HGET', key, 'rev')
local function applied()
  -- the same write, already applied (its reply was lost and it was sent again)
  if cur == rev and redis.call('HGET', key, 'blob') == blob then
    -- write it again (the same value) so that a following WAIT covers it
    redis.call('HSET', key, 'rev', rev)
    return true
  end
  return false
end
if want == '' then
  if redis.call('EXISTS', key) == 1 then
    if applied() then return {1, ''} end
    return {0, cur or ''}
  end
  local limit = tonumber(ARGV[10])
  if limit > 0 and #KEYS >= 3 then
    redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[11])
    local n = redis.call('ZCARD', KEYS[3])
    if n >= limit then return {-2, tostring(n)} end
  end
elseif redis.call('EXISTS', key) == 0 then
  return {-1, ''}
elseif cur ~= want then
  if applied() then return {1, ''} end
  return {0, cur or ''}
end
local old = redis.call('HGET', key, 'client') or ''
redis.call('HSET', key, 'rev', rev, 'client', ARGV[5], 'head', ARGV[4], 'blob', blob)
local ttl = tonumber(ARGV[6])
local function expire(k)
  if ttl > 0 then redis.call('EXPIRE', k, ttl) else redis.call('PERSIST', k) end
end
expire(key)
if #KEYS >= 3 then
  if want == '' or old ~= ARGV[5] then
    redis.call('ZADD', KEYS[2], ARGV[8], sid)
  end
  if tonumber(ARGV[9]) > tonumber(ARGV[11]) then
    redis.call('ZADD', KEYS[3], ARGV[9], sid)
  else
    redis.call('ZREM', KEYS[3], sid)
  end
  expire(KEYS[2])
  expire(KEYS[3])
end
if #KEYS >= 4 and want == '' then
  redis.call('ZADD', KEYS[4], ARGV[8], sid)
end
-- the change notice in the same step as the write (docs/notifications.md)
if ARGV[13] ~= nil and ARGV[13] ~= '' then
  redis.call('PUBLISH', ARGV[12], ARGV[13])
end
return {1, old}
"""

# KEYS[1] session hash; optional KEYS[2] client index, KEYS[3] active index, KEYS[4] global
# ARGV[1] the client hash the optional keys belong to, ARGV[2] session id
# -> {deleted count, client hash}; {-1, client hash}: the session belongs to another client
_DELETE_LUA = """
local client = redis.call('HGET', KEYS[1], 'client') or ''
if #KEYS >= 3 and client ~= '' and client ~= ARGV[1] then return {-1, client} end
local n = redis.call('DEL', KEYS[1])
for i = 2, #KEYS do redis.call('ZREM', KEYS[i], ARGV[2]) end
return {n, client}
"""

# KEYS[1] an index zset; ARGV[1] cutoff score; ARGV[2..] members whose session was missing.
# Only entries indexed before the cutoff go: a younger one may belong to a create in progress.
_PRUNE_LUA = """
local n = 0
local cutoff = tonumber(ARGV[1])
for i = 2, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) < cutoff then
    n = n + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return n
"""


@attrs.define
class _Write:
    """One compare-and-swap write, as the Lua and WATCH variants need it."""

    key: str
    sid: str
    want: bytes  # expected revision, b"" to create
    rev: bytes
    blob: bytes
    head: bytes
    chash: str
    ckey: str
    akey: str
    score: float
    until: float  # active until (0: not active)
    now: float
    limit: int = 0
    #: whether the indexes are written inside the script (same slot, or standalone)
    atomic: bool = True
    #: the change notice published with the write (b"": none)
    notice: bytes = b""


@attrs.frozen
class _Durability:
    mode: Literal["none", "aof", "replicas"]
    replicas: int = 0

    @classmethod
    def parse(cls, value: str) -> _Durability:
        text = value.strip().lower()
        if text in ("none", "aof"):
            return cls(text)  # type: ignore[arg-type]
        name, eq, count = text.partition("=")
        if name == "replicas" and eq and count.isdigit() and 1 <= int(count) <= 64:
            return cls("replicas", int(count))
        raise ConfigurationError(
            f"durability must be 'none', 'aof' or 'replicas=N' (N >= 1), not {value!r}"
        )


def _import_redis() -> Any:
    try:
        import redis
        import redis.cluster
    except ImportError as exc:
        raise ConfigurationError(
            "RedisStore needs the 'redis' package: install the redis extra "
            "(pip install 'stuisession[redis]')"
        ) from exc
    return redis


def client_hash(client_id: str) -> str:
    """The name of *client_id* in key names: SHA-256 hex (any client id is key-safe)."""
    return hashlib.sha256(client_id.encode("utf-8", "surrogatepass")).hexdigest()


def client_tag(client_id: str) -> str:
    """The layout-2 slot tag of *client_id*: three URL-safe characters (18 bits)."""
    return _tag_of_hash(client_hash(client_id))


def _tag_of_hash(chash: str) -> str:
    d = bytes.fromhex(chash[:6])
    return _B64[d[0] % 64] + _B64[d[1] % 64] + _B64[d[2] % 64]


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


def _split_store_options(url: str) -> tuple[str, dict[str, str]]:
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


def _secrets_in(url: str) -> list[str]:
    found: list[str] = []
    with contextlib.suppress(ValueError):
        parts = urlsplit(url)
        if parts.password:
            found.append(parts.password)
        found += [v for k, v in parse_qsl(parts.query) if k.lower() == "password" and v]
    return found


def _describe_client(client: Any) -> tuple[str, list[str]]:
    """(a password-free description of a supplied client, its secrets to scrub)."""
    try:
        kw = client.get_connection_kwargs()
    except Exception:  # e.g. RedisCluster, which has no single connection
        return f"<{type(client).__name__}>", []
    secrets = [kw["password"]] if kw.get("password") else []
    if kw.get("path"):
        return f"unix://{kw['path']}?db={kw.get('db', 0)}", secrets
    return f"redis://{kw.get('host')}:{kw.get('port')}/{kw.get('db', 0)}", secrets


def _batches(items: Sequence[str], size: int = _BATCH) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


def _active_until(info: SessionInfo) -> float:
    """When *info* stops being active (0 when it is closed or expired already)."""
    if info.status is not SessionStatus.ACTIVE:
        return 0.0
    end = info.expires_at
    if info.absolute_expires_at is not None:
        end = min(end, info.absolute_expires_at)
    return end


class RedisStore(SessionStore):
    """Sessions in Redis (standalone or Cluster), one hash per session.

    :param url: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://``
        (TLS; ``ssl_cert_reqs``, ``ssl_ca_certs`` ... as query arguments),
        ``unix:///path/to/socket``, or a Redis Cluster:
        ``redis+cluster://[[user]:password@]host:port[,host:port...]`` (or
        ``rediss+cluster://``; see :func:`parse_cluster_url`). The query
        arguments ``durability`` and ``durability_timeout`` set the options of
        the same names (so a CLI ``--store`` URL can carry them); the others
        go to redis-py.
    :param prefix: start of every key name (letters, digits, ``._-:/``; no
        braces, which would break the Cluster hash tags). Stores with different
        prefixes on one server never see each other's sessions.
    :param codec: seals and opens snapshots; else one is built from *keyring*,
        else from ``$STUISESSION_KEYRING``. There is no default key: every
        process sharing the store needs the same keyring.
    :param encrypt: encrypt states (only used when *codec* is not given).
    :param ttl: seconds a session key lives after its last write, so Redis
        removes abandoned sessions by itself; None keeps them until deleted.
        Give every store on one prefix the same value.
    :param cas: ``"lua"`` (a server-side script; the default, and faster) or
        ``"watch"`` (optimistic WATCH/MULTI/EXEC; refused on Redis Cluster).
    :param durability: ``"none"`` (the default: a reply means the primary has
        the write in memory), ``"aof"`` (every node must run ``appendonly yes``
        with ``appendfsync always``: checked at start, a
        :class:`~stuisession.errors.ConfigurationError` if not; a warning if
        the server does not allow ``CONFIG GET``), or ``"replicas=N"`` (every
        write waits until *N* replicas have it -- ``WAIT`` -- and, on servers
        with ``WAITAOF`` that run AOF, until it is fsynced too).
    :param durability_timeout: seconds a ``replicas=N`` write waits; a write
        that is not durable by then raises ``StorageError`` with
        ``details["reason"] == "durability_unknown"`` (it *was* applied on the
        primary).
    :param layout: the key layout (see the module docstring): None picks what
        the store already uses, else 2 on a cluster and 1 on a single server.
    :param socket_timeout: seconds to wait for a reply.
    :param connect_timeout: seconds to wait for a connection.
    :param client: an existing ``redis.Redis`` or ``redis.cluster.RedisCluster``
        (made with ``decode_responses=False``) to use instead of *url*; the
        store does not close it.

    The server is pinged on construction: if it is down,
    :class:`~stuisession.errors.StorageError` names the URL (never its
    password); a refused password is a :class:`~stuisession.errors.ConfigurationError`.
    Later connection failures, timeouts and cluster reconfigurations
    (``MOVED``/``ASK``, ``CLUSTERDOWN``, a failover) raise a retryable
    ``StorageError`` with ``details["retry_after"]``; the store recovers by
    itself once the server (or the promoted replica) answers.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "stuisession",
        codec: SnapshotCodec | None = None,
        keyring: Keyring | None = None,
        encrypt: bool = True,
        ttl: int | None = DEFAULT_TTL,
        cas: Literal["lua", "watch"] = "lua",
        durability: str | None = None,
        durability_timeout: float | None = None,
        layout: int | None = None,
        socket_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        client: Any = None,
    ) -> None:
        url, url_options = _split_store_options(url)
        if durability is None:
            durability = url_options.get("durability", "none")
        if durability_timeout is None:
            try:
                durability_timeout = float(
                    url_options.get("durability_timeout", DURABILITY_TIMEOUT)
                )
            except ValueError:
                raise ConfigurationError("durability_timeout must be a number") from None
        if not prefix or not set(prefix) <= _PREFIX_CHARS or len(prefix) > 128:
            raise ConfigurationError(
                "Redis key prefix must be 1-128 characters of letters, digits and ._-:/"
            )
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 1):
            raise ConfigurationError("ttl must be a whole number of seconds >= 1, or None")
        if cas not in ("lua", "watch"):
            raise ConfigurationError("cas must be 'lua' or 'watch'")
        if socket_timeout <= 0 or connect_timeout <= 0:
            raise ConfigurationError("Redis timeouts must be positive")
        if not 0 < durability_timeout <= 3600:
            raise ConfigurationError("durability_timeout must be in (0, 3600] seconds")
        if layout not in (None, 1, 2):
            raise ConfigurationError("layout must be 1, 2 or None")
        self._durability = _Durability.parse(durability)
        self._durability_timeout = durability_timeout
        if self._durability.mode == "replicas":
            # a WAIT must time out on the server, not on the socket
            socket_timeout = max(socket_timeout, durability_timeout + 1.0)
        if codec is not None and keyring is not None:
            raise ConfigurationError("give either a codec or a keyring, not both")
        if codec is None:
            ring = keyring if keyring is not None else Keyring.from_env()
            if ring is None:
                raise ConfigurationError(
                    "RedisStore needs a keyring shared by every process using the store: "
                    "pass keyring= or codec=, or set $STUISESSION_KEYRING"
                )
            codec = SnapshotCodec(ring, encrypt=encrypt)
        super().__init__(codec)
        self._redis = _import_redis()
        if client is None:
            self._display_url, self._secrets = redact_url(url), _secrets_in(url)
            self._cluster = is_cluster_url(url)
        else:
            self._display_url, self._secrets = _describe_client(client)
            self._cluster = isinstance(client, self._redis.cluster.RedisCluster)
        if self._cluster and cas == "watch":
            raise ConfigurationError(
                "cas='watch' cannot work on Redis Cluster (a transaction cannot span the "
                "slots of a session and the store's indexes): use cas='lua'"
            )
        if self._cluster and layout == 1:
            raise ConfigurationError("key layout 1 cannot work on Redis Cluster: use layout 2")
        self._prefix = prefix
        self._ttl = ttl
        self._cas = cas
        #: see INDEX_GRACE (tests lower it)
        self.index_grace = INDEX_GRACE
        self._owns_client = client is None
        self._feed: Any = None  # the Pub/Sub thread of the change feed, once listened to
        self._topology_lock = threading.Lock()
        self._topology_at = 0.0
        self._client: Any = (
            client if client is not None else self._connect(url, socket_timeout, connect_timeout)
        )
        self._check_client()
        self._put_script: Script = self._client.register_script(_PUT_LUA)
        self._delete_script: Script = self._client.register_script(_DELETE_LUA)
        self._prune_script: Script = self._client.register_script(_PRUNE_LUA)
        self._all_key = f"{prefix}:all"
        self._layout_key = f"{prefix}:layout"
        try:
            self._layout = self._choose_layout(layout)
            self._wait_cmds: list[tuple[Any, ...]] = []
            self._durability_text = self._check_durability()
        except BaseException:
            self._close_owned()
            raise

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisStore:
        """``RedisStore(url, **options)``."""
        return cls(url, **options)

    # -- setup ------------------------------------------------------------------------
    def _connect(self, url: str, socket_timeout: float, connect_timeout: float) -> Any:
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry

        if self._cluster:
            return self._connect_cluster(url, socket_timeout, connect_timeout)
        scheme = url.partition("://")[0].lower() if "://" in url else ""
        if scheme not in _SCHEMES:
            raise ConfigurationError(
                f"unsupported Redis URL {self._display_url!r}: use redis://, rediss://, "
                "unix:// or redis+cluster://"
            )
        # a short retry reconnects a pooled connection the server closed (e.g.
        # after a restart); retried writes are safe (the scripts are idempotent)
        retry = Retry(ExponentialBackoff(cap=0.1, base=0.01), 2)
        try:
            return self._redis.Redis.from_url(
                url,
                socket_timeout=socket_timeout,
                socket_connect_timeout=connect_timeout,
                retry=retry,
                decode_responses=False,
            )
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(
                f"invalid Redis URL {self._display_url!r}: {self._scrub(str(exc))}"
            ) from None

    def _connect_cluster(self, url: str, socket_timeout: float, connect_timeout: float) -> Any:
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry

        single, nodes = parse_cluster_url(url)
        cluster = self._redis.cluster
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
                f"invalid Redis cluster URL {self._display_url!r}: {self._scrub(str(exc))}"
            ) from None
        except (self._redis.exceptions.RedisError, cluster.RedisClusterException) as exc:
            raise StorageError(
                f"Redis cluster at {self._display_url} is not reachable: "
                f"{type(exc).__name__}: {self._scrub(str(exc))}",
                url=self._display_url,
                retry_after=_RETRY_AFTER_CLUSTER,
            ) from None

    def _check_client(self) -> None:
        kwargs = getattr(self._client, "get_connection_kwargs", None)
        if callable(kwargs) and kwargs().get("decode_responses"):
            raise ConfigurationError("RedisStore needs a client with decode_responses=False")
        rexc = self._redis.exceptions
        try:
            self._client.ping()
        except (rexc.AuthenticationError, rexc.AuthorizationError, rexc.NoPermissionError) as exc:
            self._close_owned()
            hint = "" if self._secrets else " (it needs a password: put it in the URL)"
            raise ConfigurationError(
                f"Redis at {self._display_url} refused the credentials{hint}: "
                f"{self._scrub(str(exc))}",
                url=self._display_url,
            ) from None
        except (rexc.RedisError, rexc.RedisClusterException) as exc:
            self._close_owned()
            raise StorageError(
                f"Redis at {self._display_url} is not reachable: "
                f"{type(exc).__name__}: {self._scrub(str(exc))}",
                url=self._display_url,
            ) from None

    def _choose_layout(self, requested: int | None) -> int:
        """The key layout: what ``P:layout`` records, checked against *requested*."""
        with self._errors("read the key layout"):
            marker = self._client.get(self._layout_key)
            current = 2 if marker == _LAYOUT_2 else 1
            if marker is not None and marker != _LAYOUT_2:
                raise ConfigurationError(
                    f"the store at prefix {self._prefix!r} has key layout "
                    f"{_text(marker)!r}, which this version does not know"
                )
            want = requested or (2 if self._cluster else current)
            if marker is None and want == 2:
                if self._client.exists(self._all_key):
                    raise ConfigurationError(
                        f"the store at prefix {self._prefix!r} holds sessions in key layout 1 "
                        "(as written by earlier versions on a single server); layout 2, which "
                        "Redis Cluster needs, cannot read them: use a new prefix"
                    )
                self._client.set(self._layout_key, _LAYOUT_2, nx=True)
                current = 2
        if want != current:
            raise ConfigurationError(
                f"the store at prefix {self._prefix!r} uses key layout {current}, not {want}"
            )
        if self._cluster and current != 2:  # pragma: no cover - guarded above
            raise ConfigurationError("key layout 1 cannot work on Redis Cluster")
        return current

    def _nodes(self) -> list[tuple[str, Any]]:
        """(name, client) of every server: all cluster nodes, or the one server."""
        if not self._cluster:
            return [(self._display_url, self._client)]
        return [(n.name, self._client.get_redis_connection(n)) for n in self._client.get_nodes()]

    def _check_durability(self) -> str:
        """Check the servers can give the chosen durability; its description."""
        d = self._durability
        rexc = self._redis.exceptions
        if d.mode == "none":
            return "none (a reply means the primary holds the write in memory)"
        aof_nodes: list[str] = []
        unverified: list[str] = []
        waitaof = True
        with self._errors("check the durability settings"):
            for name, node in self._nodes():
                try:
                    cfg = node.config_get("append*")
                except rexc.ResponseError as exc:  # CONFIG renamed away or not allowed
                    unverified.append(f"{name}: {type(exc).__name__}")
                    waitaof = False
                    continue
                on = _text(cfg.get(b"appendonly", cfg.get("appendonly"))) == "yes"
                fsync = _text(cfg.get(b"appendfsync", cfg.get("appendfsync")))
                if d.mode == "aof" and not (on and fsync == "always"):
                    raise ConfigurationError(
                        f"durability='aof' needs appendonly yes and appendfsync always on every "
                        f"Redis node; {name} has appendonly {'yes' if on else 'no'}, "
                        f"appendfsync {fsync or '?'}"
                    )
                if on:
                    aof_nodes.append(name)
                waitaof = waitaof and on and self._has_waitaof(node)
        if unverified:
            log.warning(
                "durability=%s could not be checked (CONFIG GET refused on %s): the guarantee "
                "rests on the servers' configuration",
                d.mode if d.mode != "replicas" else f"replicas={d.replicas}",
                ", ".join(unverified),
            )
        ms = max(1, round(self._durability_timeout * 1000))
        if d.mode == "aof":
            note = " (unverified: CONFIG GET refused)" if unverified else ""
            return f"aof (appendonly yes, appendfsync always on {len(aof_nodes)} node(s)){note}"
        self._wait_cmds = [("WAIT", d.replicas, ms)]
        extra = ""
        if waitaof:
            self._wait_cmds.append(("WAITAOF", 1, d.replicas, ms))
            extra = " + WAITAOF"
        return (
            f"replicas={d.replicas} (each write waits for WAIT {d.replicas}{extra}, up to {ms} ms)"
        )

    def _has_waitaof(self, node: Any) -> bool:
        """Whether the server has WAITAOF (Redis 7.2 and later), by its version."""
        try:
            version = _text(node.info("server").get("redis_version"))
            major, minor = (int(x) for x in version.split(".")[:2])
        except (self._redis.exceptions.RedisError, ValueError, TypeError):
            return False
        return (major, minor) >= (7, 2)

    # -- public extras ------------------------------------------------------------------
    @property
    def client(self) -> Any:
        """The underlying redis-py client."""
        return self._client

    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    def ttl(self) -> int | None:
        return self._ttl

    @property
    def cas(self) -> str:
        """The compare-and-swap method: ``"lua"`` or ``"watch"``."""
        return self._cas

    @property
    def is_cluster(self) -> bool:
        """True when the store runs on a Redis Cluster."""
        return self._cluster

    @property
    def layout(self) -> int:
        """The key layout in use (1 or 2; see the module docstring)."""
        return self._layout

    @property
    def durability(self) -> str:
        """The effective durability, as a sentence (``serve`` logs it at start)."""
        return self._durability_text

    def session_key(self, session_id: str) -> str:
        """The hash holding *session_id* (``P:s:{id}``, or ``P:s:{tag}:id`` in layout 2)."""
        if self._layout == 2:
            return f"{self._prefix}:s:{{{session_id[_TAG]}}}:{session_id}"
        return f"{self._prefix}:s:{{{session_id}}}"

    def client_key(self, client_id: str) -> str:
        """The index of *client_id*'s sessions (``P:c:{sha256}``; ``P:c:{tag}:sha256``)."""
        return self._client_key_hashed(client_hash(client_id))

    def active_key(self, client_id: str) -> str:
        """The index of *client_id*'s active sessions (``P:a:...``, scored by active-until)."""
        return self._active_key_hashed(client_hash(client_id))

    @property
    def all_key(self) -> str:
        """The index of every session (``P:all``)."""
        return self._all_key

    def _client_key_hashed(self, chash: str) -> str:
        if self._layout == 2:
            return f"{self._prefix}:c:{{{_tag_of_hash(chash)}}}:{chash}"
        return f"{self._prefix}:c:{{{chash}}}"

    def _active_key_hashed(self, chash: str) -> str:
        if self._layout == 2:
            return f"{self._prefix}:a:{{{_tag_of_hash(chash)}}}:{chash}"
        return f"{self._prefix}:a:{{{chash}}}"

    def new_session_id(self, client_id: str) -> str:
        """A fresh session id; in layout 2 it carries *client_id*'s slot tag (253 random bits)."""
        sid = super().new_session_id(client_id)
        if self._layout != 2:
            return sid
        return sid[: _TAG.start] + client_tag(client_id) + sid[_TAG.stop :]

    def _same_slot(self, session_id: str, chash: str) -> bool:
        """Whether the session and its client's indexes may be written by one script."""
        return not self._cluster or session_id[_TAG] == _tag_of_hash(chash)

    # -- change notices (docs/notifications.md) ------------------------------------------
    @property
    def changes_channel(self) -> str:
        """The Redis Pub/Sub channel every store on this prefix publishes its changes on."""
        return f"{self._prefix}:changes"

    @property
    def has_change_listeners(self) -> bool:
        # always publish: a listener may be another process (another bridge)
        return True

    def announce(self, event: ChangeEvent) -> None:
        """PUBLISH *event* on :attr:`changes_channel` (a change not written by a script).

        Writes inside :meth:`announcing` publish their notice in the same server-side
        step as the write (the CAS script, or the MULTI/EXEC transaction); this is
        the fallback for the rest (deletions by the expiry sweep), sent right after
        the write: a process that dies in between, or a failed PUBLISH (logged),
        loses that hint, never the write. Every store on this prefix with listeners
        (this one included) delivers a notice from its subscription, so a change
        through any process reaches the listeners of all.
        """
        try:
            self._client.publish(self.changes_channel, event.to_json())
        except Exception as exc:
            log.warning("could not publish a change notice: %s", self._scrub(str(exc)))

    def add_change_listener(self, listener: ChangeListener) -> None:
        """Deliver every change published on :attr:`changes_channel` to *listener*.

        The first listener starts a subscriber thread (redis-py ``run_in_thread``);
        after a lost connection it resubscribes by itself (notices published
        meanwhile are lost: hints).
        """
        super().add_change_listener(listener)
        with self._listeners_lock:
            if self._feed is not None:
                return
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)

            def on_message(message: dict[str, Any]) -> None:
                data = message.get("data")
                event = ChangeEvent.from_json(data) if isinstance(data, bytes) else None
                if event is not None:
                    self._deliver(event)

            def on_error(exc: BaseException, ps: Any, thread: Any) -> None:
                log.warning("change feed: %s; resubscribing", self._scrub(str(exc)))
                time.sleep(0.5)

            pubsub.subscribe(**{self.changes_channel: on_message})
            self._feed = pubsub.run_in_thread(
                sleep_time=0.5, daemon=True, exception_handler=on_error
            )

    def close(self) -> None:
        """Disconnect the connection pool (a client passed in is left open)."""
        feed, self._feed = self._feed, None
        if feed is not None:
            with contextlib.suppress(Exception):
                feed.stop()
                feed.join(2.0)
        self._close_owned()

    def _close_owned(self) -> None:
        if self._owns_client:
            with contextlib.suppress(Exception):
                self._client.close()
            with contextlib.suppress(Exception):
                self._client.connection_pool.disconnect()

    def __repr__(self) -> str:
        return f"RedisStore({self._display_url!r}, prefix={self._prefix!r}, cas={self._cas!r})"

    # -- errors -------------------------------------------------------------------------
    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _storage_error(self, action: str, exc: Exception) -> StorageError:
        rexc = self._redis.exceptions
        cluster_trouble = (
            rexc.ClusterError,  # CLUSTERDOWN, MASTERDOWN
            rexc.AskError,  # and MOVED: slots moving (a failover, resharding)
            rexc.TryAgainError,
            rexc.RedisClusterException,  # e.g. a slot not covered by any node
        )
        transient = (
            rexc.ConnectionError,
            rexc.TimeoutError,
            rexc.ReadOnlyError,
            rexc.OutOfMemoryError,
            *cluster_trouble,
            OSError,
        )
        auth = (rexc.AuthenticationError, rexc.AuthorizationError)
        retryable = isinstance(exc, transient) and not isinstance(exc, auth)
        details: dict[str, Any] = {"url": self._display_url, "reason": type(exc).__name__}
        if retryable:
            details["retry_after"] = (
                _RETRY_AFTER_CLUSTER
                if self._cluster or isinstance(exc, cluster_trouble)
                else _RETRY_AFTER_CONNECTION
            )
        err = StorageError(
            f"Redis store could not {action} ({self._display_url}): "
            f"{type(exc).__name__}: {self._scrub(str(exc))}",
            **details,
        )
        err.retryable = retryable
        if retryable and self._cluster:
            self._refresh_topology()
        return err

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        rexc = self._redis.exceptions
        try:
            yield
        except (rexc.RedisError, rexc.RedisClusterException) as exc:
            raise self._storage_error(action, exc) from None
        except OSError as exc:  # e.g. TLS errors surfacing as plain socket errors
            raise self._storage_error(action, exc) from None

    def _refresh_topology(self) -> None:
        """Re-read the cluster's slot map (at most every 0.2 s), e.g. after a failover."""
        now = time.monotonic()
        with self._topology_lock:
            if now - self._topology_at < 0.2:
                return
            self._topology_at = now
        with contextlib.suppress(Exception):
            self._client.nodes_manager.initialize()

    # -- one slot, one connection ---------------------------------------------------------
    def _on_slot(self, key: str, build: Callable[[Any], None]) -> list[Any]:
        """Run the commands *build* adds to a pipeline on the server holding *key*'s slot.

        One connection carries them all, so a ``WAIT`` among them covers the
        writes before it. A lost script cache is reloaded and a redirection
        (the slot moved: failover, resharding) followed, a bounded number of
        times; what remains raises.
        """
        rexc = self._redis.exceptions
        last: Exception | None = None
        for _ in range(_REDIRECTS):
            conn = (
                self._client.get_redis_connection(self._client.get_node_from_key(key))
                if self._cluster
                else self._client
            )
            pipe = conn.pipeline(transaction=False)
            build(pipe)
            results: list[Any] = pipe.execute(raise_on_error=False)
            last = next((r for r in results if isinstance(r, Exception)), None)
            if isinstance(last, rexc.NoScriptError):
                # the server lost its script cache (restart, SCRIPT FLUSH, a promoted
                # replica): load the scripts and send everything again (idempotent)
                for script in (self._put_script, self._delete_script):
                    conn.script_load(script.script)
                continue
            if self._cluster and isinstance(last, (rexc.AskError, rexc.ClusterDownError)):
                self._topology_at = 0.0
                self._refresh_topology()
                time.sleep(0.05)
                continue
            if last is not None:
                raise last
            return results
        assert last is not None
        raise last

    def _check_durable(self, results: Sequence[Any], action: str) -> None:
        """Raise ``durability_unknown`` unless the WAIT/WAITAOF replies reach the target."""
        need = self._durability.replicas
        got = [results[-len(self._wait_cmds) + i] for i in range(len(self._wait_cmds))]
        reached = True
        for cmd, reply in zip(self._wait_cmds, got, strict=True):
            if cmd[0] == "WAIT":
                reached = reached and int(reply) >= need
            else:  # WAITAOF -> [local fsynced, replicas fsynced]
                reached = reached and int(reply[0]) >= 1 and int(reply[1]) >= need
        if not reached:
            raise StorageError(
                f"Redis store applied a {action} but could not confirm it reached "
                f"{need} replica(s) within {self._durability_timeout:g} s",
                url=self._display_url,
                reason="durability_unknown",
                replies=[r if isinstance(r, int) else list(r) for r in got],
            )

    # -- primitives ---------------------------------------------------------------------
    def _get(self, session_id: str) -> bytes | None:
        with self._errors("read a session"):
            blob: bytes | None = self._client.hget(self.session_key(session_id), "blob")
        return blob

    def _get_head(self, session_id: str) -> bytes | None:
        with self._errors("read a session"):
            head: bytes | None = self._client.hget(self.session_key(session_id), "head")
        return head if head is not None else self._get(session_id)

    def create_within_limit(
        self, session: Session, *, limit: int, max_size: int | None = None
    ) -> None:
        """Store a new session unless its client already has *limit* active sessions.

        The count and the create are one script on the client's slot, so the
        limit holds across every process sharing the store. Over the limit:
        :class:`~stuisession.errors.SessionError` (``details["limit"]``). A
        session whose id does not carry its client's tag (layout 2, not from
        :meth:`new_session_id`) is created without this check.
        """
        check_session_id(session.session_id)
        self._put(session.info, self._encode(session, max_size), None, limit=limit)

    def _put(
        self,
        info: SessionInfo,
        blob: bytes,
        expected_revision: int | None,
        *,
        limit: int = 0,
    ) -> None:
        sid = info.session_id
        chash = client_hash(info.client_id)
        w = _Write(
            key=self.session_key(sid),
            sid=sid,
            want=b"" if expected_revision is None else str(expected_revision).encode(),
            rev=str(info.revision).encode(),
            blob=blob,
            head=blob[: parse_header(blob).payload_offset],
            chash=chash,
            ckey=self._client_key_hashed(chash),
            akey=self._active_key_hashed(chash),
            score=time.time(),
            until=_active_until(info),
            now=info.last_accessed if expected_revision is not None else info.created_at,
            limit=limit,
            atomic=self._same_slot(sid, chash),
        )
        notice = self._take_notice(sid)
        if notice is not None:
            w.notice = notice.to_json()
        with self._errors("write a session"):
            status, extra = self._put_lua(w) if self._cas == "lua" else self._put_watch(w)
            if status == 1 and extra and extra != chash:
                # the session changed hands: move its index entries
                pipe = self._client.pipeline(transaction=False)
                pipe.zadd(w.ckey, {sid: w.score})
                pipe.zrem(self._client_key_hashed(extra), sid)
                pipe.zrem(self._active_key_hashed(extra), sid)
                if not w.atomic:
                    self._index_cmds(pipe, w)
                pipe.execute()
        if status == -1:
            raise SessionNotFound("Session not found")
        if status == -2:
            raise SessionError(
                f"Client has reached the limit of {limit} active sessions", limit=limit
            )
        if status == 0:
            current = int(extra) if extra.isdigit() else None
            if expected_revision is None:
                raise ConflictError("session already exists", current_revision=current)
            raise ConflictError("session was changed by another writer", current_revision=current)

    def _index_cmds(self, pipe: Any, w: _Write) -> None:
        """The index upkeep a script could not do (the session is on another slot)."""
        if w.until > w.now:
            pipe.zadd(w.akey, {w.sid: w.until})
        else:
            pipe.zrem(w.akey, w.sid)
        for key in (w.ckey, w.akey):
            pipe.execute_command(*self._expire_cmd(key))

    def _expire_cmd(self, key: str) -> tuple[Any, ...]:
        return ("EXPIRE", key, self._ttl) if self._ttl is not None else ("PERSIST", key)

    def _put_lua(self, w: _Write) -> tuple[int, str]:
        """The CAS script on the session's slot (with its indexes when they share it).

        Standalone: one round trip (the script, then WAIT if asked). Cluster: the
        global index entry of a new session first, then the script (and WAIT) on
        the session's primary.
        """
        keys = [w.key]
        if w.atomic:
            keys += [w.ckey, w.akey]
            if not self._cluster:
                keys.append(self._all_key)
        args = [w.want, w.rev, w.blob, w.head, w.chash, self._ttl or 0, w.sid]
        args += [repr(w.score), repr(w.until), w.limit, repr(w.now)]
        args += [self.changes_channel, w.notice]
        if w.want == b"" and (self._cluster or not w.atomic):
            # index first: a session is never missing from its indexes
            pipe = self._client.pipeline(transaction=False)
            pipe.zadd(self._all_key, {w.sid: w.score})
            if not w.atomic:
                pipe.zadd(w.ckey, {w.sid: w.score})
            pipe.execute()
        sha = self._put_script.sha

        def build(pipe: Any) -> None:
            pipe.evalsha(sha, len(keys), *keys, *args)
            for cmd in self._wait_cmds:
                pipe.execute_command(*cmd)

        results = self._on_slot(w.key, build)
        status, extra = int(results[0][0]), _text(results[0][1])
        if status == 1 and not w.atomic:
            pipe = self._client.pipeline(transaction=False)
            self._index_cmds(pipe, w)
            pipe.execute()
        if status == 1 and self._wait_cmds:
            self._check_durable(results, "write")
        return status, extra

    def _put_watch(self, w: _Write) -> tuple[int, str]:
        """Optimistic transaction: WATCH, read, check, MULTI/EXEC; retried on WatchError.

        Standalone only. The client's active index is watched too when a create
        checks the limit, so the count and the create are one transaction.
        """
        rexc = self._redis.exceptions
        current = b""
        check_limit = w.want == b"" and w.limit > 0
        with self._client.pipeline(transaction=True) as pipe:
            for _ in range(_WATCH_ATTEMPTS):
                try:
                    pipe.watch(w.key, *([w.akey] if check_limit else []))
                    cur, old = self._watch_read(pipe, w.key)
                    exists = cur is not None or old is not None
                    current = cur or b""
                    if w.want and not exists:
                        return -1, ""
                    if (cur != w.want) if w.want else exists:
                        if cur == w.rev and pipe.hget(w.key, "blob") == w.blob:
                            result = (1, "")  # the same write, already applied
                            self._watch_wait(pipe)
                            return result
                        return 0, _text(cur)
                    if check_limit:
                        n = int(pipe.zcount(w.akey, f"({w.now!r}", "+inf"))
                        if n >= w.limit:
                            return -2, str(n)
                    pipe.multi()
                    pipe.hset(
                        w.key,
                        mapping={"rev": w.rev, "client": w.chash, "head": w.head, "blob": w.blob},
                    )
                    pipe.execute_command(*self._expire_cmd(w.key))
                    if w.want == b"" or _text(old) != w.chash:
                        pipe.zadd(w.ckey, {w.sid: w.score})
                    if w.want == b"":
                        pipe.zadd(self._all_key, {w.sid: w.score})
                    self._index_cmds(pipe, w)
                    if w.notice:  # in the transaction: published if and only if written
                        pipe.publish(self.changes_channel, w.notice)
                    for cmd in self._wait_cmds:
                        pipe.execute_command(*cmd)
                    results = pipe.execute()
                    if self._wait_cmds:
                        self._check_durable(results, "write")
                    return 1, _text(old)
                except rexc.WatchError:
                    # someone wrote in between (perhaps only an access-time
                    # update at the same revision): check again
                    continue
                finally:
                    pipe.reset()  # unwatches
        return 0, _text(current)

    def _watch_wait(self, pipe: Any) -> None:
        """For an already-applied write: make sure it is durable before saying so."""
        if not self._wait_cmds:
            return
        pipe.unwatch()
        results = [pipe.execute_command(*cmd) for cmd in self._wait_cmds]
        self._check_durable(results, "write")

    def _watch_read(self, pipe: Any, key: str) -> tuple[bytes | None, bytes | None]:
        rev, old = pipe.hmget(key, "rev", "client")
        return rev, old

    def _delete(self, session_id: str) -> bool:
        key = self.session_key(session_id)
        with self._errors("delete a session"):
            chash = _text(self._client.hget(key, "client"))
            deleted = 0
            sha = self._delete_script.sha
            for _ in range(_REDIRECTS):
                keys = [key]
                atomic = bool(chash) and self._same_slot(session_id, chash)
                if atomic:
                    keys += [self._client_key_hashed(chash), self._active_key_hashed(chash)]
                    if not self._cluster:
                        keys.append(self._all_key)
                ks = list(keys)

                def build(pipe: Any, ks: list[str] = ks, chash: str = chash) -> None:
                    pipe.evalsha(sha, len(ks), *ks, chash, session_id)
                    for cmd in self._wait_cmds:
                        pipe.execute_command(*cmd)

                results = self._on_slot(key, build)
                deleted, found = int(results[0][0]), _text(results[0][1])
                if deleted >= 0:
                    break
                chash = found  # it moved to another client meanwhile: try again
            else:
                raise ConflictError("session kept changing hands while being deleted")
            # the other indexes go after the session: it is never left unindexed
            pipe = self._client.pipeline(transaction=False)
            if found and not atomic:
                pipe.zrem(self._client_key_hashed(found), session_id)
                pipe.zrem(self._active_key_hashed(found), session_id)
            if self._cluster or not atomic:
                pipe.zrem(self._all_key, session_id)
            pipe.execute()
        if deleted and self._wait_cmds:
            self._check_durable(results, "delete")
        return bool(deleted)

    def _ids(self) -> Iterator[str]:
        return iter(self._index_members(self._all_key))

    def _client_ids(self, client_id: str) -> Iterator[str]:
        return iter(self._index_members(self.client_key(client_id)))

    def _index_members(self, key: str) -> list[str]:
        with self._errors("read an index"):
            members: list[bytes] = self._client.zrange(key, 0, -1)
        ids = (m.decode("ascii", "replace") for m in members)
        return [sid for sid in ids if is_valid_session_id(sid)]

    # -- batched reads ------------------------------------------------------------------
    def _heads(
        self, ids: Sequence[str], *, sizes: bool = False
    ) -> Iterator[tuple[str, bytes | None, int]]:
        """(id, head or None, blob size) for *ids*, read in pipelined batches."""
        for chunk in _batches(ids):
            with self._errors("read sessions"):
                pipe = self._client.pipeline(transaction=False)
                for sid in chunk:
                    key = self.session_key(sid)
                    pipe.hget(key, "head")
                    if sizes:
                        pipe.hstrlen(key, "blob")
                results = pipe.execute()
            step = 2 if sizes else 1
            for i, sid in enumerate(chunk):
                size = int(results[i * step + 1]) if sizes else 0
                yield sid, results[i * step], size

    def _prune(self, index_key: str, ids: Iterable[str]) -> None:
        members = list(ids)
        if not members:
            return
        cutoff = time.time() - self.index_grace
        with self._errors("prune an index"):
            for chunk in _batches(members):
                self._prune_script(keys=[index_key], args=[cutoff, *chunk])

    def _readable(
        self, index_key: str, *, sizes: bool = False, client_id: str | None = None
    ) -> Iterator[tuple[SessionInfo, int]]:
        """Verified records of the sessions in an index; stale entries are pruned."""
        stale: list[str] = []
        for sid, head, size in self._heads(self._index_members(index_key), sizes=sizes):
            if head is None:
                stale.append(sid)  # deleted, or expired by its TTL
                continue
            try:
                info = self.codec.read_info(head, expected_session_id=sid)
            except IntegrityError:
                continue
            if client_id is not None and info.client_id != client_id:
                stale.append(sid)  # left behind by a move to another client
                continue
            yield info, size
        self._prune(index_key, stale)
        if client_id is not None and stale:
            with self._errors("prune an index"):
                self._client.zrem(self.active_key(client_id), *stale)

    def iter_infos(self) -> Iterator[SessionInfo]:
        """Every readable session record (heads are read in pipelined batches)."""
        for info, _ in self._readable(self._all_key):
            yield info

    def list_by_client(self, client_id: str) -> list[SessionInfo]:
        """The records of *client_id*'s sessions, oldest first (from its index)."""
        check_client_id(client_id)
        infos = [i for i, _ in self._readable(self.client_key(client_id), client_id=client_id)]
        infos.sort(key=lambda i: (i.created_at, i.session_id))
        return infos

    def session_rows(
        self, client_id: str | None = None
    ) -> Iterator[tuple[SessionInfo, int | None]]:
        """As :meth:`SessionStore.session_rows`, read in pipelined batches from an index."""
        key = self._all_key if client_id is None else self.client_key(client_id)
        yield from self._readable(key, sizes=True, client_id=client_id)

    def statistics(self, now: float) -> StoreStatistics:
        """Counts over the store, from the global index (no SCAN of the keyspace)."""
        total = active = stored = 0
        clients: set[str] = set()
        for info, size in self._readable(self._all_key, sizes=True):
            total += 1
            stored += size
            if info.is_active(now):
                active += 1
                clients.add(info.client_id)
        return StoreStatistics(
            total_sessions=total, active_sessions=active, clients=len(clients), stored_bytes=stored
        )

"""A Redis store: sealed snapshots in Redis hashes, compare-and-swap on the server.

Key layout (see ``docs/backends.md``), with ``P`` the store's *prefix*::

    P:s:{<session_id>}        hash  blob, head, rev, ver, client   (TTL = retention)
    P:c:{<sha256(client_id)>} zset  session ids of one client  (TTL = retention)
    P:all                     zset  every session id (score: when it was indexed)

The part in braces is a Redis Cluster *hash tag*: everything about one session
lives in one hash (one slot), so the compare-and-swap script touches a single
key and works unchanged on a cluster. The two indexes live in other slots and
are only ever touched by separate commands, never inside a script with a
session key.

A write is one Lua script (``cas="lua"``, the default) or a WATCH/MULTI/EXEC
transaction (``cas="watch"``, standalone servers only). Either way the blob,
its head and its revision are replaced together, so no reader ever sees a
half-written session. Both are idempotent: a write whose reply was lost and
is sent again (redis-py retries on connection errors) is recognised and
reported as done rather than as a conflict.

Index entries are added *before* a session is created and removed after it is
deleted, so a session is never missing from its indexes; entries pointing at a
key that no longer exists (deleted, or expired by its TTL) are skipped by
readers and removed lazily once they are older than a grace period.

The ``redis`` package is imported only when a store is made: install the
``redis`` extra (``pip install 'stuisession[redis]'``).
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit

import attrs

from stuisession.codec.snapshot import SnapshotCodec, parse_header
from stuisession.errors import (
    ConfigurationError,
    ConflictError,
    IntegrityError,
    SessionNotFound,
    StorageError,
)
from stuisession.ids import check_client_id, is_valid_session_id
from stuisession.keys import Keyring
from stuisession.state.model import SessionInfo
from stuisession.stores.base import SessionStore, StoreStatistics

if TYPE_CHECKING:
    from redis.commands.core import Script

__all__ = ["DEFAULT_TTL", "RedisStore", "client_hash", "redact_url"]

#: default retention of a session key after its last write (30 days)
DEFAULT_TTL = 30 * 86400
#: index entries younger than this (seconds) are never pruned: their session
#: may be in the middle of being created
INDEX_GRACE = 300.0
_BATCH = 256
_WATCH_ATTEMPTS = 32
_SCHEMES = ("redis", "rediss", "unix")
_PREFIX_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-:/")

# KEYS[1] session hash
# ARGV: expected record token (version:lineage, '' for records older than it),
#       new token, blob, head, client hash, ttl (0 = none), '1' to create, new revision
# -> {1, previous client hash} written | {0, current revision} conflict | {-1, ''} not found
_PUT_LUA = """
local key = KEYS[1]
local want, ver, blob = ARGV[1], ARGV[2], ARGV[3]
local cur = redis.call('HGET', key, 'ver') or ''
local function applied()
  -- the same write, already applied (its reply was lost and it was sent again)
  return cur == ver and redis.call('HGET', key, 'blob') == blob
end
if ARGV[7] == '1' then
  if redis.call('EXISTS', key) == 1 then
    if applied() then return {1, ''} end
    return {0, redis.call('HGET', key, 'rev') or ''}
  end
elseif redis.call('EXISTS', key) == 0 then
  return {-1, ''}
elseif cur ~= want then
  if applied() then return {1, ''} end
  return {0, redis.call('HGET', key, 'rev') or ''}
end
local old = redis.call('HGET', key, 'client') or ''
redis.call('HSET', key, 'rev', ARGV[8], 'ver', ver, 'client', ARGV[5], 'head', ARGV[4],
  'blob', blob)
local ttl = tonumber(ARGV[6])
if ttl > 0 then
  redis.call('EXPIRE', key, ttl)
else
  redis.call('PERSIST', key)
end
return {1, old}
"""

# KEYS[1] session hash; ARGV[1] '1' to delete only if ARGV[2] is the record token
# -> {deleted count, client hash}
_DELETE_LUA = """
local client = redis.call('HGET', KEYS[1], 'client') or ''
if ARGV[1] == '1' and (redis.call('HGET', KEYS[1], 'ver') or '') ~= ARGV[2] then
  return {0, client}
end
return {redis.call('DEL', KEYS[1]), client}
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
    want: bytes  # expected record token (see record_token)
    ver: bytes  # the new record token
    create: bool
    rev: bytes
    blob: bytes
    head: bytes
    chash: str
    #: commands sent before the CAS (index entries of a new session) and after it
    pre: list[tuple[Any, ...]] = attrs.Factory(list)
    post: list[tuple[Any, ...]] = attrs.Factory(list)


def record_token(info: SessionInfo) -> bytes:
    """The compare-and-swap token of a record as kept in the ``ver`` field."""
    if info.cas_token == (0, ""):
        return b""  # written before records had versions: no ``ver`` field
    return f"{info.version}:{info.lineage}".encode()


def _import_redis() -> Any:
    try:
        import redis
    except ImportError as exc:
        raise ConfigurationError(
            "RedisStore needs the 'redis' package: install the redis extra "
            "(pip install 'stuisession[redis]')"
        ) from exc
    return redis


def client_hash(client_id: str) -> str:
    """The name of *client_id* in key names: SHA-256 hex (any client id is key-safe)."""
    return hashlib.sha256(client_id.encode("utf-8", "surrogatepass")).hexdigest()


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


class RedisStore(SessionStore):
    """Sessions in Redis (standalone or Cluster), one hash per session.

    :param url: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://``
        (TLS; ``ssl_cert_reqs``, ``ssl_ca_certs`` ... as query arguments) or
        ``unix:///path/to/socket``. A connection pool is made from it.
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
        ``"watch"`` (optimistic WATCH/MULTI/EXEC; not on Redis Cluster).
    :param socket_timeout: seconds to wait for a reply.
    :param connect_timeout: seconds to wait for a connection.
    :param client: an existing ``redis.Redis`` or ``redis.cluster.RedisCluster``
        (made with ``decode_responses=False``) to use instead of *url*; the
        store does not close it.

    The server is pinged on construction: if it is down,
    :class:`~stuisession.errors.StorageError` names the URL (never its
    password); a refused password is a :class:`~stuisession.errors.ConfigurationError`.
    Later connection failures and timeouts raise a retryable ``StorageError``;
    the store recovers by itself once the server is back.
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
        socket_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        client: Any = None,
    ) -> None:
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
        else:
            self._display_url, self._secrets = _describe_client(client)
        self._prefix = prefix
        self._ttl = ttl
        self._cas = cas
        #: see INDEX_GRACE (tests lower it)
        self.index_grace = INDEX_GRACE
        self._owns_client = client is None
        self._client: Any = (
            client if client is not None else self._connect(url, socket_timeout, connect_timeout)
        )
        self._check_client()
        self._put_script: Script = self._client.register_script(_PUT_LUA)
        self._delete_script: Script = self._client.register_script(_DELETE_LUA)
        self._prune_script: Script = self._client.register_script(_PRUNE_LUA)
        self._all_key = f"{prefix}:all"

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisStore:
        """``RedisStore(url, **options)``."""
        return cls(url, **options)

    # -- setup ------------------------------------------------------------------------
    def _connect(self, url: str, socket_timeout: float, connect_timeout: float) -> Any:
        scheme = url.partition("://")[0].lower() if "://" in url else ""
        if scheme not in _SCHEMES:
            raise ConfigurationError(
                f"unsupported Redis URL {self._display_url!r}: use redis://, rediss:// or unix://"
            )
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry

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
        except rexc.RedisError as exc:
            self._close_owned()
            raise StorageError(
                f"Redis at {self._display_url} is not reachable: "
                f"{type(exc).__name__}: {self._scrub(str(exc))}",
                url=self._display_url,
            ) from None

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

    def session_key(self, session_id: str) -> str:
        """The hash holding *session_id* (``P:s:{id}``; the id is the hash tag)."""
        return f"{self._prefix}:s:{{{session_id}}}"

    def client_key(self, client_id: str) -> str:
        """The index of *client_id*'s sessions (``P:c:{sha256}``)."""
        return self._client_key_hashed(client_hash(client_id))

    @property
    def all_key(self) -> str:
        """The index of every session (``P:all``)."""
        return self._all_key

    def _client_key_hashed(self, chash: str) -> str:
        return f"{self._prefix}:c:{{{chash}}}"

    def close(self) -> None:
        """Disconnect the connection pool (a client passed in is left open)."""
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
        err = StorageError(
            f"Redis store could not {action} ({self._display_url}): "
            f"{type(exc).__name__}: {self._scrub(str(exc))}",
            url=self._display_url,
            reason=type(exc).__name__,
        )
        transient = (
            rexc.ConnectionError,
            rexc.TimeoutError,
            rexc.ReadOnlyError,
            rexc.OutOfMemoryError,
            rexc.TryAgainError,
            rexc.ClusterDownError,
            OSError,
        )
        auth = (rexc.AuthenticationError, rexc.AuthorizationError)
        err.retryable = isinstance(exc, transient) and not isinstance(exc, auth)
        return err

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except self._redis.exceptions.RedisError as exc:
            raise self._storage_error(action, exc) from None
        except OSError as exc:  # e.g. TLS errors surfacing as plain socket errors
            raise self._storage_error(action, exc) from None

    # -- primitives ---------------------------------------------------------------------
    def _get(self, session_id: str) -> bytes | None:
        with self._errors("read a session"):
            blob: bytes | None = self._client.hget(self.session_key(session_id), "blob")
        return blob

    def _get_head(self, session_id: str) -> bytes | None:
        with self._errors("read a session"):
            head: bytes | None = self._client.hget(self.session_key(session_id), "head")
        return head if head is not None else self._get(session_id)

    def _put(self, info: SessionInfo, blob: bytes, expected: SessionInfo | None) -> None:
        sid = info.session_id
        chash = client_hash(info.client_id)
        ckey = self._client_key_hashed(chash)
        expected_revision = None if expected is None else expected.revision
        w = _Write(
            key=self.session_key(sid),
            want=b"" if expected is None else record_token(expected),
            ver=record_token(info),
            create=expected is None,
            rev=str(info.revision).encode(),
            blob=blob,
            head=blob[: parse_header(blob).payload_offset],
            chash=chash,
        )
        if expected_revision is None:
            # index first: a session is never missing from its indexes
            now = time.time()
            w.pre = [("ZADD", ckey, now, sid), ("ZADD", self._all_key, now, sid)]
        w.post = [self._expire_cmd(ckey)]
        with self._errors("write a session"):
            status, extra = self._put_lua(w) if self._cas == "lua" else self._put_watch(w)
            if status == 1 and expected_revision is not None and extra and extra != chash:
                # the session changed hands: move its index entry
                pipe = self._client.pipeline(transaction=False)
                pipe.zadd(ckey, {sid: time.time()})
                pipe.zrem(self._client_key_hashed(extra), sid)
                pipe.execute()
        if status == -1:
            raise SessionNotFound("Session not found")
        if status == 0:
            current = int(extra) if extra.isdigit() else None
            if expected_revision is None:
                raise ConflictError("session already exists", current_revision=current)
            raise ConflictError("session was changed by another writer", current_revision=current)

    def _expire_cmd(self, key: str) -> tuple[Any, ...]:
        return ("EXPIRE", key, self._ttl) if self._ttl is not None else ("PERSIST", key)

    def _put_lua(self, w: _Write) -> tuple[int, str]:
        """One round trip: index commands, EVALSHA of the CAS script, TTL refresh.

        The pipeline is not a transaction (its keys live in different slots).
        """
        args = [w.want, w.ver, w.blob, w.head, w.chash, self._ttl or 0, int(w.create), w.rev]
        rexc = self._redis.exceptions
        results = self._put_pipeline(w, args)
        if isinstance(results[len(w.pre)], rexc.NoScriptError):
            # the server lost its script cache (restart, SCRIPT FLUSH): reload it
            # and send everything again (each command is idempotent)
            self._put_script.sha = self._client.script_load(_PUT_LUA)
            results = self._put_pipeline(w, args)
        for r in results:
            if isinstance(r, Exception):
                raise r
        result = results[len(w.pre)]
        return int(result[0]), _text(result[1])

    def _put_pipeline(self, w: _Write, args: list[Any]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for cmd in w.pre:
            pipe.execute_command(*cmd)
        pipe.evalsha(self._put_script.sha, 1, w.key, *args)
        for cmd in w.post:
            pipe.execute_command(*cmd)
        results: list[Any] = pipe.execute(raise_on_error=False)
        return results

    def _put_watch(self, w: _Write) -> tuple[int, str]:
        """Optimistic transaction: WATCH, read, check, MULTI/EXEC; retried on WatchError."""
        rexc = self._redis.exceptions
        if w.pre:
            pipe = self._client.pipeline(transaction=False)
            for cmd in w.pre:
                pipe.execute_command(*cmd)
            pipe.execute()
        current = b""
        with self._client.pipeline(transaction=True) as pipe:
            for _ in range(_WATCH_ATTEMPTS):
                try:
                    pipe.watch(w.key)
                    cur, old, ver = self._watch_read(pipe, w.key)
                    exists = cur is not None or old is not None
                    current = cur or b""
                    if not w.create and not exists:
                        return -1, ""
                    if exists if w.create else (ver or b"") != w.want:
                        if (ver or b"") == w.ver and pipe.hget(w.key, "blob") == w.blob:
                            return 1, ""  # the same write, already applied
                        return 0, _text(cur)
                    pipe.multi()
                    pipe.hset(
                        w.key,
                        mapping={
                            "rev": w.rev,
                            "ver": w.ver,
                            "client": w.chash,
                            "head": w.head,
                            "blob": w.blob,
                        },
                    )
                    pipe.execute_command(*self._expire_cmd(w.key))
                    for cmd in w.post:
                        pipe.execute_command(*cmd)
                    pipe.execute()
                    return 1, _text(old)
                except rexc.WatchError:
                    # someone wrote in between (perhaps only an access-time
                    # update at the same revision): check again
                    continue
                finally:
                    pipe.reset()  # unwatches
        return 0, _text(current)

    def _watch_read(self, pipe: Any, key: str) -> tuple[bytes | None, bytes | None, bytes | None]:
        rev, old, ver = pipe.hmget(key, "rev", "client", "ver")
        return rev, old, ver

    @contextlib.contextmanager
    def _client_lock(self, client_id: str) -> Iterator[None]:
        # single-node: a lease lock (SET NX PX) per client around count-and-create;
        # on Redis Cluster the create with its limit check becomes one script
        lock = self._client.lock(
            f"{self._prefix}:lock:{{{client_hash(client_id)}}}",
            timeout=30,
            blocking_timeout=10,
        )
        with self._errors("lock a client"):
            if not lock.acquire():
                raise StorageError("client lock not acquired within 10 s", reason="lock_timeout")
        try:
            yield
        finally:
            with contextlib.suppress(Exception):  # expired lease: nothing left to release
                lock.release()

    def _delete(self, session_id: str, expected: SessionInfo | None = None) -> bool:
        key = self.session_key(session_id)
        args = [b"0", b""] if expected is None else [b"1", record_token(expected)]
        with self._errors("delete a session"):
            deleted, chash = self._delete_script(keys=[key], args=args)
            chash = _text(chash)
            if not deleted and expected is not None:
                return False  # changed since the caller read it: still indexed, still there
            # the indexes go after the session: it is never left unindexed
            pipe = self._client.pipeline(transaction=False)
            if chash:
                pipe.zrem(self._client_key_hashed(chash), session_id)
            pipe.zrem(self._all_key, session_id)
            pipe.execute()
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

"""The Redis session store (key layouts and guarantees: see the package docstring)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any, Literal

from stuisession.codec.notice import open_notice, seal_notice
from stuisession.codec.snapshot import SnapshotCodec
from stuisession.errors import ConfigurationError, IntegrityError
from stuisession.ids import check_client_id, check_session_id
from stuisession.keys import Keyring
from stuisession.state.model import Session, SessionInfo
from stuisession.stores.base import (
    ChangeEvent,
    ChangeListener,
    SessionStore,
    StoreStatistics,
    VerifyItem,
)
from stuisession.stores.redis import notices, reads, urls
from stuisession.stores.redis.durability import (
    DURABILITY_TIMEOUT,
    Durability,
    DurabilityGuard,
    nodes,
)
from stuisession.stores.redis.errors import ErrorMapper
from stuisession.stores.redis.keys import TAG, choose_layout
from stuisession.stores.redis.scripts import Scripts
from stuisession.stores.redis.writes import Writer

#: default retention of a session key after its last write (30 days)
DEFAULT_TTL = 30 * 86400
#: index entries younger than this (seconds) are never pruned: their session
#: may be in the middle of being created
INDEX_GRACE = 300.0
_PREFIX_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-:/")


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
    :param layout: the key layout (see the package docstring): None picks what
        the store already uses, else 3 (session and client ids hashed with a key
        from the keyring, never in key names). 1 and 2 are what earlier versions
        wrote (ids in clear); an existing store keeps its layout.
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
        url, url_options = urls.split_store_options(url)
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
        if layout not in (None, 1, 2, 3):
            raise ConfigurationError("layout must be 1, 2, 3 or None")
        mode = Durability.parse(durability)
        if mode.mode == "replicas":
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
        redis = urls.import_redis()
        if client is None:
            display, found = urls.redact_url(url), urls.secrets_in(url)
            cluster = urls.is_cluster_url(url)
        else:
            display, found = urls.describe_client(client)
            cluster = isinstance(client, redis.cluster.RedisCluster)
        if cluster and cas == "watch":
            raise ConfigurationError(
                "cas='watch' cannot work on Redis Cluster (a transaction cannot span the "
                "slots of a session and the store's indexes): use cas='lua'"
            )
        if cluster and layout == 1:
            raise ConfigurationError("key layout 1 cannot work on Redis Cluster: use layout 2")
        self._errors = ErrorMapper(redis, display, found, cluster)
        self._prefix = prefix
        self._ttl = ttl
        self._cas = cas
        #: see INDEX_GRACE (tests lower it)
        self.index_grace = INDEX_GRACE
        self._owns_client = client is None
        self._feed = notices.ChangeFeed()  # the change feed's thread, once listened to
        self._client: Any = (
            client
            if client is not None
            else urls.connect(redis, url, self._errors, socket_timeout, connect_timeout)
        )
        self._errors.client = self._client
        try:
            urls.check_client(self._client, self._errors)
        except BaseException:
            self._close_owned()
            raise
        self._scripts = Scripts.register(self._client)
        self._guard = DurabilityGuard(mode, durability_timeout, display)
        try:
            self._keys = choose_layout(
                self._client, prefix, layout, cluster, self._errors, codec.keyring
            )
            self._guard.check(nodes(self._client, cluster, display), self._errors)
        except BaseException:
            self._close_owned()
            raise
        self._writer = Writer(
            self._client,
            self._errors,
            self._keys,
            self._scripts,
            self._guard,
            ttl,
            cas,
            # late-bound: looked up on each call, so that tests may replace the method
            lambda pipe, key: self._watch_read(pipe, key),  # noqa: PLW0108
        )

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisStore:
        """``RedisStore(url, **options)``."""
        return cls(url, **options)

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
        return self._errors.cluster

    @property
    def layout(self) -> int:
        """The key layout in use (1, 2 or 3; see the package docstring)."""
        return self._keys.layout

    @property
    def durability(self) -> str:
        """The effective durability, as a sentence (``serve`` logs it at start)."""
        return self._guard.text

    def session_key(self, session_id: str) -> str:
        """The hash holding *session_id* (``P:s:{tag}:name`` in layout 3, ``P:s:{id}`` in
        layout 1, ``P:s:{tag}:id`` in layout 2)."""
        return self._keys.session(session_id)

    def index_member(self, session_id: str) -> str:
        """What stands for *session_id* in the index zsets (layout 3: its slot tag and keyed
        name, 35 characters; before: the id)."""
        return self._keys.member(session_id)

    def client_hash(self, client_id: str) -> str:
        """The name of *client_id* in key names and the ``client`` field (64 hex chars:
        HMAC-SHA256 under the name key in layout 3, SHA-256 before)."""
        return self._keys.chash(client_id)

    def client_tag(self, client_id: str) -> str:
        """The slot tag (3 characters) of *client_id*'s keys and new session ids."""
        return self._keys.slot_tag(client_id)

    def client_key(self, client_id: str) -> str:
        """The index of *client_id*'s sessions (``P:c:{tag}:hash``; ``P:c:{sha256}`` in 1)."""
        return self._keys.client(self._keys.chash(client_id))

    def active_key(self, client_id: str) -> str:
        """The index of *client_id*'s active sessions (``P:a:...``, scored by active-until)."""
        return self._keys.active(self._keys.chash(client_id))

    @property
    def all_key(self) -> str:
        """The index of every session (``P:all``)."""
        return self._keys.all

    def new_session_id(self, client_id: str) -> str:
        """A fresh session id; from layout 2 on it carries *client_id*'s slot tag (253
        random bits)."""
        sid = super().new_session_id(client_id)
        if self._keys.layout == 1:
            return sid
        return sid[: TAG.start] + self._keys.slot_tag(client_id) + sid[TAG.stop :]

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
        notices.publish(self._client, self.changes_channel, self._seal(event), self._errors.scrub)

    # notices are sealed (codec/notice.py): any client of this Redis may subscribe to the
    # channel, and a notice names its session by the raw id
    def _seal(self, event: ChangeEvent) -> bytes:
        return seal_notice(self.codec.keyring, event.to_json(), self.changes_channel.encode())

    def _open(self, data: bytes) -> ChangeEvent | None:
        payload = open_notice(self.codec.keyring, data, self.changes_channel.encode())
        return None if payload is None else ChangeEvent.from_json(payload)

    def add_change_listener(self, listener: ChangeListener) -> None:
        """Deliver every change published on :attr:`changes_channel` to *listener*.

        The first listener starts a subscriber thread (redis-py ``run_in_thread``);
        after a lost connection it resubscribes by itself (notices published
        meanwhile are lost: hints).
        """
        super().add_change_listener(listener)
        with self._listeners_lock:
            self._feed.start(
                self._client, self.changes_channel, self._open, self._deliver, self._errors.scrub
            )

    def close(self) -> None:
        """Disconnect the connection pool (a client passed in is left open)."""
        self._feed.stop()
        self._close_owned()

    def _close_owned(self) -> None:
        if self._owns_client:
            with contextlib.suppress(Exception):
                self._client.close()
            with contextlib.suppress(Exception):
                self._client.connection_pool.disconnect()

    def __repr__(self) -> str:
        return (
            f"RedisStore({self._errors.display_url!r}, prefix={self._prefix!r}, cas={self._cas!r})"
        )

    # -- primitives ---------------------------------------------------------------------
    def _get(self, session_id: str) -> bytes | None:
        with self._errors.errors("read a session"):
            blob: bytes | None = self._client.hget(self.session_key(session_id), "blob")
        return blob

    def _get_head(self, session_id: str) -> bytes | None:
        with self._errors.errors("read a session"):
            head: bytes | None = self._client.hget(self.session_key(session_id), "head")
        return head if head is not None else self._get(session_id)

    def create(
        self,
        session: Session,
        *,
        max_size: int | None = None,
        max_per_client: int | None = None,
        now: float | None = None,
    ) -> None:
        """As :meth:`SessionStore.create`; the limit is checked inside the create script.

        The count and the create are one script on the client's slot, so the
        limit holds across every process sharing the store (standalone or
        cluster). A session whose id does not carry its client's tag (layout 2,
        not from :meth:`new_session_id`) is created without this check.
        """
        check_session_id(session.session_id)
        blob = self._encode(session, max_size)
        self._put(session.info, blob, None, limit=max_per_client or 0, now=now)

    def _put(
        self,
        info: SessionInfo,
        blob: bytes,
        expected: SessionInfo | None,
        *,
        limit: int = 0,
        now: float | None = None,
        write_id: bytes | None = None,
    ) -> None:
        w = self._writer.build(info, blob, expected, limit=limit, now=now, write_id=write_id)
        notice = self._take_notice(info.session_id)
        if notice is not None:
            w.notice = self._seal(notice)
        self._writer.put(w)

    def _watch_read(self, pipe: Any, key: str) -> tuple[bytes | None, bytes | None, bytes | None]:
        """(rev, client, ver) of a watched session hash (``cas="watch"``)."""
        rev, old, ver = pipe.hmget(key, "rev", "client", "ver")
        return rev, old, ver

    def _delete(self, session_id: str, expected: SessionInfo | None = None) -> bool:
        return self._writer.delete(session_id, expected)

    def _ids(self) -> Iterator[str]:
        if self._keys.hashed:  # the ids are in the (sealed) records only
            return (info.session_id for info, _ in self._readable(self._keys.all))
        return iter(reads.index_members(self._client, self._errors, self._keys, self._keys.all))

    def _client_ids(self, client_id: str) -> Iterator[str]:
        key = self.client_key(client_id)
        if self._keys.hashed:
            return (info.session_id for info, _ in self._readable(key, client_id=client_id))
        return iter(reads.index_members(self._client, self._errors, self._keys, key))

    def _readable(
        self, index_key: str, *, sizes: bool = False, client_id: str | None = None
    ) -> Iterator[tuple[SessionInfo, int]]:
        """Verified records of the sessions in an index; stale entries are pruned.

        In layout 3 an index member names its session by a keyed hash: the record read
        from its key must hash back to it (a record copied under another key is skipped).
        """
        stale: list[str] = []
        members = reads.index_members(self._client, self._errors, self._keys, index_key)
        hashed = self._keys.hashed
        for member, head, size in reads.heads(
            self._client, self._errors, self._keys, members, sizes=sizes
        ):
            if head is None:
                stale.append(member)  # deleted, or expired by its TTL
                continue
            try:
                info = self.codec.read_info(head, expected_session_id=None if hashed else member)
            except IntegrityError:
                continue
            if hashed and not self._keys.matches(member, info.session_id):
                continue  # not the session this member names
            if client_id is not None and info.client_id != client_id:
                stale.append(member)  # left behind by a move to another client
                continue
            yield info, size
        cutoff = time.time() - self.index_grace
        reads.prune(self._errors, self._scripts.prune, index_key, stale, cutoff)
        if client_id is not None and stale:
            with self._errors.errors("prune an index"):
                self._client.zrem(self.active_key(client_id), *stale)

    def verify_items(self) -> list[VerifyItem]:
        """One item per indexed session; in layout 3 also those whose record is unreadable
        (named by their index member, their key as ``path``)."""
        if not self._keys.hashed:
            return super().verify_items()
        return reads.verify_items(self._client, self._errors, self._keys, self.codec)

    def _verify_read(self, item: VerifyItem) -> bytes | None:
        # an item with a ``path`` (an unreadable record listed by its key) is read there
        key = item.path or self.session_key(item.session_id)
        with self._errors.errors("read a session"):
            blob: bytes | None = self._client.hget(key, "blob")
        return blob

    def iter_infos(self) -> Iterator[SessionInfo]:
        """Every readable session record (heads are read in pipelined batches)."""
        for info, _ in self._readable(self._keys.all):
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
        key = self._keys.all if client_id is None else self.client_key(client_id)
        yield from self._readable(key, sizes=True, client_id=client_id)

    def statistics(self, now: float) -> StoreStatistics:
        """Counts over the store, from the global index (no SCAN of the keyspace)."""
        total = active = stored = 0
        clients: set[str] = set()
        for info, size in self._readable(self._keys.all, sizes=True):
            total += 1
            stored += size
            if info.is_active(now):
                active += 1
                clients.add(info.client_id)
        return StoreStatistics(
            total_sessions=total, active_sessions=active, clients=len(clients), stored_bytes=stored
        )

"""A Redis store: sealed snapshots in Redis hashes, compare-and-swap on the server.

Runs on a standalone server or on a Redis Cluster. Key layouts (see
``docs/backends.md``), with ``P`` the store's *prefix*, ``T`` a
three-character *slot tag*:

Layout 3 (every new store; no key name, member or field holds an id)::

    P:s:{T}:<N>               hash  blob, head, rev, ver, wid, client=K  (TTL = retention)
    P:c:{T}:K                 zset  members T+N of one client's sessions (score: when indexed)
    P:a:{T}:K                 zset  the client's *active* sessions (score: active until)
    P:all                     zset  every session's member T+N (score: when it was indexed)
    P:layout                  string "3:<key id>"

``N`` is a keyed hash of the session id (32 hex), ``K`` of the client id (64
hex), both HMAC-SHA256 under ``keyring.derive("redis-key-names", key id)`` for
the key id in ``P:layout``; ``T`` (characters 8-10 of the session id) is taken
from ``K``. Listings read the ids from the (sealed) records.

Earlier layouts, still opened as they are (with a warning)::

    layout 1:  P:s:{<session_id>}, P:c:{H}, P:a:{H}, P:all    (H: SHA-256 hex of the client id)
    layout 2:  P:s:{T}:<session_id>, P:c:{T}:H, P:a:{T}:H, P:all, P:layout = "2"

From layout 2 on the part in braces is a Redis Cluster *hash tag* shared by a
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
matter there), so every layout is as atomic as on a cluster.

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

from stuisession.stores.redis.durability import DURABILITY_TIMEOUT
from stuisession.stores.redis.keys import client_hash, client_tag, record_token
from stuisession.stores.redis.store import DEFAULT_TTL, INDEX_GRACE, RedisStore
from stuisession.stores.redis.urls import is_cluster_url, parse_cluster_url, redact_url

__all__ = [
    "DEFAULT_TTL",
    "DURABILITY_TIMEOUT",
    "INDEX_GRACE",
    "RedisStore",
    "client_hash",
    "client_tag",
    "is_cluster_url",
    "parse_cluster_url",
    "record_token",
    "redact_url",
]

"""A Redis store: sealed snapshots in Redis hashes, compare-and-swap on the server.

Runs on a standalone server or on a Redis Cluster. Key layouts (see
``docs/backends.md``), with ``P`` the store's *prefix*, ``H`` the SHA-256 hex
of a client id and ``T`` a three-character *slot tag* derived from ``H``:

Layout 1 (standalone servers; what stores before 0.x wrote, still the default there)::

    P:s:{<session_id>}        hash  blob, head, rev, ver, client   (TTL = retention)
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

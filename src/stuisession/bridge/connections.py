"""Which clients are connected: the bridge's connection table.

ZeroMQ has no connection events on a ROUTER socket that a REQ client would
trigger reliably, so the rule is activity-based and documented in
``docs/bridge.md``:

- a connection is identified by its ZeroMQ routing identity;
- it is *connected* from its first request, and stays connected while it
  sends requests at least every ``idle_timeout`` seconds (default 60 s; a
  ``ping`` or any command counts as a heartbeat);
- a session is *attached* to the connection whose session command on it last
  succeeded (a refused request attaches nothing), and follows a rotated id;
- after ``idle_timeout`` without a request it is *disconnected*, and the
  sessions it used become *detached*: nothing is lost, and any client that
  restores them (with the right credentials) re-attaches them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import attrs

from stuisession.clock import isoformat


@attrs.define
class Connection:
    """One client connection as the bridge sees it."""

    identity: str
    connected_since: float
    last_seen: float
    client_id: str | None = None
    requests: int = 0
    sessions: set[str] = attrs.field(factory=set)
    #: the resume token last accepted from this connection, per attached session
    #: (bearer secrets: never listed, never logged)
    tokens: dict[str, str] = attrs.field(factory=dict, repr=False)

    def as_dict(self, now: float) -> dict[str, Any]:
        """A JSON-ready summary (session ids are not included: they are bearer secrets)."""
        return {
            "identity": self.identity,
            "client_id": self.client_id,
            # every time field of a reply is ISO-8601 UTC (docs/protocol.md)
            "connected_since": isoformat(self.connected_since),
            "last_seen": isoformat(self.last_seen),
            "idle_seconds": round(max(0.0, now - self.last_seen), 3),
            "requests": self.requests,
            "sessions": len(self.sessions),
        }


#: most connections listed in a statistics snapshot (the rest are only counted)
MAX_LISTED = 20


class ConnectionTracker:
    """Thread-safe table of connections and the sessions they are attached to.

    Constant time per request: connections are kept in an LRU (an
    ``OrderedDict``, least recently seen first) and sessions are indexed by the
    connection they are attached to, so nothing on the request path scans the
    table. A sweep pops idle connections from the LRU's old end only.
    """

    def __init__(self, idle_timeout: float = 60.0, max_connections: int = 100_000) -> None:
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self._conns: OrderedDict[str, Connection] = OrderedDict()
        #: session id -> identity of the connection it is attached to
        self._owner: dict[str, str] = {}
        self._lock = threading.Lock()
        self.disconnects = 0

    def seen(
        self,
        identity: str,
        now: float,
        *,
        client_id: str | None = None,
        session_id: str | None = None,
    ) -> Connection:
        """Record a request from *identity* (and the client it named).

        *session_id* attaches that session at once; the bridge instead calls
        :meth:`attach` once a session command on it has succeeded.
        """
        with self._lock:
            conn = self._conns.get(identity)
            if conn is None:
                if len(self._conns) >= self.max_connections:
                    self._evict_oldest()
                conn = self._conns[identity] = Connection(identity, now, now)
            else:
                self._conns.move_to_end(identity)
            conn.last_seen = max(conn.last_seen, now)
            conn.requests += 1
            if client_id is not None:
                conn.client_id = client_id
            if session_id is not None:
                self._attach(conn, session_id)
            return conn

    def attach(
        self,
        identity: str,
        session_id: str,
        resume_token: str | None = None,
        *,
        replaces: str | None = None,
    ) -> None:
        """Mark *session_id* as used by *identity* (after a successful session command).

        *resume_token* is the token the connection proved it holds (kept for
        capture hooks in strict mode). *replaces* is the id the session had
        before a rotation: it is forgotten everywhere.
        """
        with self._lock:
            if replaces is not None and replaces != session_id:
                self._detach(replaces)
            conn = self._conns.get(identity)
            if conn is not None:
                self._attach(conn, session_id)
                if resume_token is not None:
                    conn.tokens[session_id] = resume_token

    def _attach(self, conn: Connection, session_id: str) -> None:
        # a session is attached to the connection that used it last
        previous = self._owner.get(session_id)
        if previous is not None and previous != conn.identity:
            other = self._conns.get(previous)
            if other is not None:
                other.sessions.discard(session_id)
                other.tokens.pop(session_id, None)
        conn.sessions.add(session_id)
        self._owner[session_id] = conn.identity

    def detach(self, session_id: str) -> None:
        """Forget *session_id* everywhere (closed or rotated)."""
        with self._lock:
            self._detach(session_id)

    def _detach(self, session_id: str) -> None:
        owner = self._owner.pop(session_id, None)
        conn = None if owner is None else self._conns.get(owner)
        if conn is not None:
            conn.sessions.discard(session_id)
            conn.tokens.pop(session_id, None)

    def _drop(self, conn: Connection) -> None:
        del self._conns[conn.identity]
        for sid in conn.sessions:
            if self._owner.get(sid) == conn.identity:
                del self._owner[sid]
        self.disconnects += 1

    def _evict_oldest(self) -> None:
        # the LRU's old end: the connection seen least recently
        self._drop(next(iter(self._conns.values())))

    def sweep(self, now: float) -> list[Connection]:
        """Drop connections idle longer than ``idle_timeout``; return them (their
        sessions are now detached)."""
        with self._lock:
            gone: list[Connection] = []
            # least recently seen first: stop at the first one still live
            for conn in self._conns.values():
                if now - conn.last_seen <= self.idle_timeout:
                    break
                gone.append(conn)
            for c in gone:
                self._drop(c)
            return gone

    def session_of(self, identity: str) -> str | None:
        """The one session *identity* is attached to, if exactly one."""
        with self._lock:
            conn = self._conns.get(identity)
            if conn is not None and len(conn.sessions) == 1:
                return next(iter(conn.sessions))
            return None

    def token_of(self, identity: str, session_id: str) -> str | None:
        """The resume token *identity* last presented for *session_id*, if any."""
        with self._lock:
            conn = self._conns.get(identity)
            return None if conn is None else conn.tokens.get(session_id)

    def snapshot(self, now: float, limit: int = MAX_LISTED) -> list[dict[str, Any]]:
        """At most *limit* connections, most recently seen first (bounded reply size)."""
        with self._lock:
            out: list[dict[str, Any]] = []
            for conn in reversed(self._conns.values()):
                if len(out) >= limit:
                    break
                out.append(conn.as_dict(now))
            return out

    def counts(self, now: float) -> dict[str, int]:
        """Counts only, for statistics: connections, attached sessions, idle connections.

        Never identities or client ids (statistics are readable by any client).
        """
        with self._lock:
            return {
                "connected_clients": len(self._conns),
                "attached_sessions": len(self._owner),
                "disconnects": self.disconnects,
            }

    def attached_sessions(self) -> int:
        """Sessions attached to a live connection (O(1))."""
        with self._lock:
            return len(self._owner)

    def __len__(self) -> int:
        with self._lock:
            return len(self._conns)

"""The writes of a Redis store: compare-and-swap by Lua script or WATCH/MULTI/EXEC, deletes."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

import attrs

from stuisession.codec.snapshot import parse_header
from stuisession.errors import ConflictError, SessionError, SessionNotFound
from stuisession.state.model import SessionInfo
from stuisession.stores.redis.durability import DurabilityGuard
from stuisession.stores.redis.errors import ErrorMapper
from stuisession.stores.redis.keys import Keys, active_until, record_token, text
from stuisession.stores.redis.scripts import Scripts

_WATCH_ATTEMPTS = 32
#: redirections (MOVED/ASK) and lost script caches followed within one write
_REDIRECTS = 4

#: reads (rev, client, ver) of a watched session hash: ``(pipe, key) -> tuple``
WatchRead = Callable[[Any, str], tuple[bytes | None, bytes | None, bytes | None]]


@attrs.define
class Write:
    """One compare-and-swap write, as the Lua and WATCH variants need it."""

    key: str
    sid: str
    #: what stands for the session in the index zsets (see Keys.member)
    member: str
    want: bytes  # expected record token (see record_token), b"" to create
    ver: bytes  # the new record token
    create: bool
    wid: bytes  # this write's random id (see PUT_LUA)
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


@attrs.define
class Writer:
    """Writes sessions of one store (``cas`` ``"lua"`` or ``"watch"``) and deletes them."""

    client: Any
    errors: ErrorMapper
    keys: Keys
    scripts: Scripts
    guard: DurabilityGuard
    ttl: int | None
    cas: str
    #: looked up on every WATCH attempt (tests interfere through it)
    watch_read: WatchRead

    @property
    def _cluster(self) -> bool:
        return self.errors.cluster

    def build(
        self,
        info: SessionInfo,
        blob: bytes,
        expected: SessionInfo | None,
        *,
        limit: int,
        now: float | None,
        write_id: bytes | None,
    ) -> Write:
        """The write of *blob* (the record *info*) over *expected* (None: a create)."""
        sid = info.session_id
        chash = self.keys.chash(info.client_id)
        if now is None:
            now = info.last_accessed if expected is not None else info.created_at
        return Write(
            key=self.keys.session(sid),
            sid=sid,
            member=self.keys.member(sid),
            want=b"" if expected is None else record_token(expected),
            ver=record_token(info),
            create=expected is None,
            # two writers that read the same record may build identical
            # successors (a rotation each): only a resend of this very write
            # may count as already applied
            wid=write_id or secrets.token_hex(8).encode(),
            rev=str(info.revision).encode(),
            blob=blob,
            head=blob[: parse_header(blob).payload_offset],
            chash=chash,
            ckey=self.keys.client(chash),
            akey=self.keys.active(chash),
            score=time.time(),
            until=active_until(info),
            now=now,
            limit=limit,
            atomic=self.keys.same_slot(sid, chash),
        )

    def put(self, w: Write) -> None:
        """Apply *w*; ``SessionNotFound``, ``SessionError`` (limit) or ``ConflictError``."""
        sid = w.member
        with self.errors.errors("write a session"):
            status, extra = self._put_lua(w) if self.cas == "lua" else self._put_watch(w)
            if status == 1 and extra and extra != w.chash:
                # the session changed hands: move its index entries
                pipe = self.client.pipeline(transaction=False)
                pipe.zadd(w.ckey, {sid: w.score})
                pipe.zrem(self.keys.client(extra), sid)
                pipe.zrem(self.keys.active(extra), sid)
                if not w.atomic:
                    self._index_cmds(pipe, w)
                pipe.execute()
        if status == -1:
            raise SessionNotFound("Session not found")
        if status == -2:
            raise SessionError(
                f"Client has reached the limit of {w.limit} active sessions", limit=w.limit
            )
        if status == 0:
            current = int(extra) if extra.isdigit() else None
            if w.create:
                raise ConflictError("session already exists", current_revision=current)
            raise ConflictError("session was changed by another writer", current_revision=current)

    def _index_cmds(self, pipe: Any, w: Write) -> None:
        """The index upkeep a script could not do (the session is on another slot)."""
        if w.until > w.now:
            pipe.zadd(w.akey, {w.member: w.until})
        else:
            pipe.zrem(w.akey, w.member)
        for key in (w.ckey, w.akey):
            pipe.execute_command(*self._expire_cmd(key))

    def _expire_cmd(self, key: str) -> tuple[Any, ...]:
        return ("EXPIRE", key, self.ttl) if self.ttl is not None else ("PERSIST", key)

    def _put_lua(self, w: Write) -> tuple[int, str]:
        """The CAS script on the session's slot (with its indexes when they share it).

        Standalone: one round trip (the script, then WAIT if asked). Cluster: the
        global index entry of a new session first, then the script (and WAIT) on
        the session's primary.
        """
        keys = [w.key]
        if w.atomic:
            keys += [w.ckey, w.akey]
            if not self._cluster:
                keys.append(self.keys.all)
        args = [w.want, w.rev, w.blob, w.head, w.chash, self.ttl or 0, w.member]
        args += [repr(w.score), repr(w.until), w.limit, repr(w.now)]
        args += [self.keys.channel, w.notice]
        args += [int(w.create), w.ver, w.wid]
        if w.create and (self._cluster or not w.atomic):
            # index first: a session is never missing from its indexes
            pipe = self.client.pipeline(transaction=False)
            pipe.zadd(self.keys.all, {w.member: w.score})
            if not w.atomic:
                pipe.zadd(w.ckey, {w.member: w.score})
            pipe.execute()
        sha = self.scripts.put.sha

        def build(pipe: Any) -> None:
            pipe.evalsha(sha, len(keys), *keys, *args)
            for cmd in self.guard.wait_cmds:
                pipe.execute_command(*cmd)

        results = self._on_slot(w.key, build)
        status, extra = int(results[0][0]), text(results[0][1])
        if status == 1 and not w.atomic:
            pipe = self.client.pipeline(transaction=False)
            self._index_cmds(pipe, w)
            pipe.execute()
        if status == 1 and self.guard.wait_cmds:
            self.guard.check_durable(results, "write")
        return status, extra

    def _put_watch(self, w: Write) -> tuple[int, str]:
        """Optimistic transaction: WATCH, read, check, MULTI/EXEC; retried on WatchError.

        Standalone only. The client's active index is watched too when a create
        checks the limit, so the count and the create are one transaction.
        """
        rexc = self.errors.redis.exceptions
        current = b""
        check_limit = w.create and w.limit > 0
        with self.client.pipeline(transaction=True) as pipe:
            for _ in range(_WATCH_ATTEMPTS):
                try:
                    pipe.watch(w.key, *([w.akey] if check_limit else []))
                    cur, old, ver = self.watch_read(pipe, w.key)
                    exists = cur is not None or old is not None
                    current = cur or b""
                    if not w.create and not exists:
                        return -1, ""
                    if exists if w.create else (ver or b"") != w.want:
                        if (ver or b"") == w.ver and pipe.hget(w.key, "wid") == w.wid:
                            result = (1, "")  # the same write, already applied
                            self._watch_wait(pipe)
                            return result
                        return 0, text(cur)
                    if check_limit:
                        n = int(pipe.zcount(w.akey, f"({w.now!r}", "+inf"))
                        if n >= w.limit:
                            return -2, str(n)
                    pipe.multi()
                    pipe.hset(
                        w.key,
                        mapping={
                            "rev": w.rev,
                            "ver": w.ver,
                            "wid": w.wid,
                            "client": w.chash,
                            "head": w.head,
                            "blob": w.blob,
                        },
                    )
                    pipe.execute_command(*self._expire_cmd(w.key))
                    if w.create or text(old) != w.chash:
                        pipe.zadd(w.ckey, {w.member: w.score})
                    if w.create:
                        pipe.zadd(self.keys.all, {w.member: w.score})
                    self._index_cmds(pipe, w)
                    if w.notice:  # in the transaction: published if and only if written
                        pipe.publish(self.keys.channel, w.notice)
                    for cmd in self.guard.wait_cmds:
                        pipe.execute_command(*cmd)
                    results = pipe.execute()
                    if self.guard.wait_cmds:
                        self.guard.check_durable(results, "write")
                    return 1, text(old)
                except rexc.WatchError:
                    # someone wrote in between (perhaps only an access-time
                    # update at the same revision): check again
                    continue
                finally:
                    pipe.reset()  # unwatches
        return 0, text(current)

    def _watch_wait(self, pipe: Any) -> None:
        """For an already-applied write: make sure it is durable before saying so."""
        if not self.guard.wait_cmds:
            return
        pipe.unwatch()
        results = [pipe.execute_command(*cmd) for cmd in self.guard.wait_cmds]
        self.guard.check_durable(results, "write")

    def delete(self, session_id: str, expected: SessionInfo | None = None) -> bool:
        """Delete a session (only while its record is *expected*, when given); whether it was."""
        key = self.keys.session(session_id)
        member = self.keys.member(session_id)
        check = [b"0", b""] if expected is None else [b"1", record_token(expected)]
        with self.errors.errors("delete a session"):
            chash = text(self.client.hget(key, "client"))
            deleted = 0
            sha = self.scripts.delete.sha
            for _ in range(_REDIRECTS):
                keys = [key]
                atomic = bool(chash) and self.keys.same_slot(session_id, chash)
                if atomic:
                    keys += [self.keys.client(chash), self.keys.active(chash)]
                    if not self._cluster:
                        keys.append(self.keys.all)
                ks = list(keys)

                def build(pipe: Any, ks: list[str] = ks, chash: str = chash) -> None:
                    pipe.evalsha(sha, len(ks), *ks, chash, member, *check)
                    for cmd in self.guard.wait_cmds:
                        pipe.execute_command(*cmd)

                results = self._on_slot(key, build)
                deleted, found = int(results[0][0]), text(results[0][1])
                if deleted == -2:
                    return False  # written since the caller read it: still there, indexed
                if deleted >= 0:
                    break
                chash = found  # it moved to another client meanwhile: try again
            else:
                raise ConflictError("session kept changing hands while being deleted")
            # the other indexes go after the session: it is never left unindexed
            pipe = self.client.pipeline(transaction=False)
            if found and not atomic:
                pipe.zrem(self.keys.client(found), member)
                pipe.zrem(self.keys.active(found), member)
            if self._cluster or not atomic:
                pipe.zrem(self.keys.all, member)
            pipe.execute()
        if deleted and self.guard.wait_cmds:
            self.guard.check_durable(results, "delete")
        return bool(deleted)

    # -- one slot, one connection ---------------------------------------------------------
    def _on_slot(self, key: str, build: Callable[[Any], None]) -> list[Any]:
        """Run the commands *build* adds to a pipeline on the server holding *key*'s slot.

        One connection carries them all, so a ``WAIT`` among them covers the
        writes before it. A lost script cache is reloaded and a redirection
        (the slot moved: failover, resharding) followed, a bounded number of
        times; what remains raises.
        """
        rexc = self.errors.redis.exceptions
        last: Exception | None = None
        for _ in range(_REDIRECTS):
            conn = (
                self.client.get_redis_connection(self.client.get_node_from_key(key))
                if self._cluster
                else self.client
            )
            pipe = conn.pipeline(transaction=False)
            build(pipe)
            results: list[Any] = pipe.execute(raise_on_error=False)
            last = next((r for r in results if isinstance(r, Exception)), None)
            if isinstance(last, rexc.NoScriptError):
                # the server lost its script cache (restart, SCRIPT FLUSH, a promoted
                # replica): load the scripts and send everything again (idempotent)
                for script in (self.scripts.put, self.scripts.delete):
                    conn.script_load(script.script)
                continue
            if self._cluster and isinstance(last, (rexc.AskError, rexc.ClusterDownError)):
                self.errors.refresh_topology(force=True)
                time.sleep(0.05)
                continue
            if last is not None:
                raise last
            return results
        assert last is not None
        raise last

"""The Lua scripts of :class:`~stuisession.stores.redis.RedisStore` (one write, one slot)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from redis.commands.core import Script

# KEYS[1] session hash; optional KEYS[2] client index, KEYS[3] active index,
# KEYS[4] global index (given only when they may be touched atomically: same slot,
# or a standalone server)
# ARGV: expected record token ('' = create, or a record older than tokens), new
#       revision, blob, head, client hash, ttl (0 = none), index member (the session id,
#       or in layout 3 its slot tag and keyed name), index score,
#       active until (0 = not active), limit (0 = none), now, change channel, change
#       notice ('' = none), '1' to create, new token, write id (random per write: a
#       resend of this write, not another writer's identical one, is recognised as
#       already applied)
# The compare-and-swap is on the record token (``ver``: version:lineage), which
# every record write changes; ``rev`` (the state revision) is kept for readers.
# -> {1, previous client hash} written | {0, current revision} conflict
#    | {-1, ''} not found | {-2, active count} the client's limit is reached
PUT_LUA = """
local key = KEYS[1]
local want, rev, blob, sid = ARGV[1], ARGV[2], ARGV[3], ARGV[7]
local create, ver, wid = ARGV[14] == '1', ARGV[15], ARGV[16]
local cur = redis.call('HGET', key, 'ver') or ''
local function applied()
  -- the same write, already applied (its reply was lost and it was sent again)
  if cur == ver and redis.call('HGET', key, 'wid') == wid then
    -- write it again (the same value) so that a following WAIT covers it
    redis.call('HSET', key, 'ver', ver)
    return true
  end
  return false
end
if create then
  if redis.call('EXISTS', key) == 1 then
    if applied() then return {1, ''} end
    return {0, redis.call('HGET', key, 'rev') or ''}
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
  return {0, redis.call('HGET', key, 'rev') or ''}
end
local old = redis.call('HGET', key, 'client') or ''
redis.call('HSET', key, 'rev', rev, 'ver', ver, 'wid', wid, 'client', ARGV[5],
  'head', ARGV[4], 'blob', blob)
local ttl = tonumber(ARGV[6])
local function expire(k)
  if ttl > 0 then redis.call('EXPIRE', k, ttl) else redis.call('PERSIST', k) end
end
expire(key)
if #KEYS >= 3 then
  if create or old ~= ARGV[5] then
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
if #KEYS >= 4 and create then
  redis.call('ZADD', KEYS[4], ARGV[8], sid)
end
-- the change notice in the same step as the write (docs/notifications.md)
if ARGV[13] ~= nil and ARGV[13] ~= '' then
  redis.call('PUBLISH', ARGV[12], ARGV[13])
end
return {1, old}
"""

# KEYS[1] session hash; optional KEYS[2] client index, KEYS[3] active index, KEYS[4] global
# ARGV[1] the client hash the optional keys belong to, ARGV[2] index member, ARGV[3]
# '1' to delete only while the record token is ARGV[4]
# -> {deleted count, client hash}; {-1, client hash}: the session belongs to another
#    client; {-2, client hash}: the record was written since the caller read it
DELETE_LUA = """
local client = redis.call('HGET', KEYS[1], 'client') or ''
if ARGV[3] == '1' and (redis.call('HGET', KEYS[1], 'ver') or '') ~= ARGV[4] then
  return {-2, client}
end
if #KEYS >= 3 and client ~= '' and client ~= ARGV[1] then return {-1, client} end
local n = redis.call('DEL', KEYS[1])
for i = 2, #KEYS do redis.call('ZREM', KEYS[i], ARGV[2]) end
return {n, client}
"""

# KEYS[1] an index zset; ARGV[1] cutoff score; ARGV[2..] members whose session was missing.
# Only entries indexed before the cutoff go: a younger one may belong to a create in progress.
PRUNE_LUA = """
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


@attrs.frozen
class Scripts:
    """The scripts registered with one client."""

    put: Script
    delete: Script
    prune: Script

    @classmethod
    def register(cls, client: Any) -> Scripts:
        return cls(
            client.register_script(PUT_LUA),
            client.register_script(DELETE_LUA),
            client.register_script(PRUNE_LUA),
        )

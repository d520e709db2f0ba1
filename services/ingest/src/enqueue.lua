-- Appends a request's stream entries, atomically, unless the backlog is
-- full; records the endpoints that version 3 entries refer to, and the
-- request's idempotency record when it has a key.
-- KEYS[1]  the stream
-- KEYS[2]  the retry schedule (sorted set)
-- KEYS[3]  the endpoint records (hash: address -> record)
-- KEYS[4]  the endpoint reference counts (hash: address -> entries)
-- KEYS[5]  postbacks in the stream beyond one per entry (string)
-- KEYS[6]  finished positions of entries (hash: entry id -> bitmap)
-- KEYS[7]  the idempotency record (used only when ARGV[2] > 0)
-- KEYS[8]  postbacks in the retry schedule's levels (string)
-- ARGV[1]  the largest backlog accepted, in postbacks (0: no limit)
-- ARGV[2]  seconds to keep the idempotency record (0: the request has no key)
-- ARGV[3]  the idempotency record: "<body SHA-256>:<first id>:<count>"
-- ARGV[4]  '1' when a WAIT follows (a replay then writes its record again)
-- ARGV[5]  R, the number of endpoint records
-- then R pairs: address, record
-- then one triple per entry: record number (1..R, or 0 for a single
--          postback), postbacks in it beyond the first, the value of "p"
-- Returns  the entry ids, in order; or {'REPLAY', stored record} when the
--          key was used before for the same body (nothing is written, but
--          for the record itself again when a WAIT follows, so that the
--          WAIT covers the first write); or the error "REUSED" (the key was used for
--          another body), "BACKLOG <n>", or "COLLISION <address>" when the
--          hash holds another record under an address (nothing is written
--          then).
--
-- A script runs without interruption, so other clients see all of a
-- request's entries, its records and its idempotency record, or none. With
-- maxmemory-policy noeviction an out-of-memory Redis refuses the script
-- before it writes.
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  local stored = redis.call('GET', KEYS[7])
  if stored then
    local fingerprint = string.match(stored, '^[^:]*')
    if fingerprint ~= string.match(ARGV[3], '^[^:]*') then
      return redis.error_reply("REUSED the key was used before for another request body")
    end
    if ARGV[4] == '1' then
      redis.call('SET', KEYS[7], stored, 'KEEPTTL')
    end
    return {'REPLAY', stored}
  end
end
local length = redis.call('XLEN', KEYS[1])
if length == 0 then
  -- Nothing waits, so nothing is counted or partly finished: heals what an
  -- entry someone deleted by hand left behind.
  redis.call('DEL', KEYS[5], KEYS[6])
end
local max = tonumber(ARGV[1])
if max > 0 then
  -- Delivered entries are deleted, so the stream holds exactly what is
  -- waiting for a first or a repeated attempt; retries wait in the
  -- schedule (KEYS[8] counts them; KEYS[2] holds those scheduled before
  -- its levels).
  local backlog = length + redis.call('ZCARD', KEYS[2]) + tonumber(redis.call('GET', KEYS[5]) or '0')
    + tonumber(redis.call('GET', KEYS[8]) or '0')
  if backlog >= max then
    return redis.error_reply('BACKLOG ' .. backlog)
  end
end
local records = tonumber(ARGV[5])
local stored = {}
for r = 1, records do
  local have = redis.call('HGET', KEYS[3], ARGV[4 + 2 * r])
  if have and have ~= ARGV[5 + 2 * r] then
    return redis.error_reply('COLLISION ' .. ARGV[4 + 2 * r])
  end
  stored[r] = have
end
local ids = {}
local uses = {}
local extra = 0
for i = 6 + 2 * records, #ARGV, 3 do
  local r = tonumber(ARGV[i])
  extra = extra + tonumber(ARGV[i + 1])
  ids[#ids + 1] = redis.call('XADD', KEYS[1], '*', 'p', ARGV[i + 2])
  if r > 0 then
    uses[r] = (uses[r] or 0) + 1
  end
end
for r, n in pairs(uses) do
  if not stored[r] then
    redis.call('HSET', KEYS[3], ARGV[4 + 2 * r], ARGV[5 + 2 * r])
  end
  redis.call('HINCRBY', KEYS[4], ARGV[4 + 2 * r], n)
end
if extra > 0 then
  redis.call('INCRBY', KEYS[5], extra)
end
if ttl > 0 then
  redis.call('SET', KEYS[7], ARGV[3], 'EX', ttl)
end
return ids

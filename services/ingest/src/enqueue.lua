-- Appends a request's stream entries, atomically; records the endpoints
-- that version 3 entries refer to, and the request's idempotency record
-- when it has a key. Whether the backlog or Redis's memory leaves room was
-- decided before, by ingest (services/ingest/src/gate.rs), so the common
-- request costs three commands here: HGET, XADD, HINCRBY.
-- Mirrors: postback_common::records::request (entries and their records),
-- ::endpoint (addresses and reference counts), ::stream_entry (field p).
-- KEYS[1]  the stream
-- KEYS[2]  the endpoint records (hash: address -> record)
-- KEYS[3]  the endpoint reference counts (hash: address -> references)
-- KEYS[4]  postbacks in the stream beyond one per entry (string)
-- KEYS[5]  the idempotency record (used only when ARGV[1] > 0)
-- ARGV[1]  seconds to keep the idempotency record (0: the request has no key)
-- ARGV[2]  the idempotency record: "<body SHA-256>:<first id>:<count>"
-- ARGV[3]  '1' when a WAIT follows (a replay then writes its record again)
-- ARGV[4]  '1' when only a replay may be answered (ingest would refuse the
--          request as new: backlog or memory)
-- ARGV[5]  R, the number of endpoint records
-- then R pairs: address, record
-- then one triple per entry: record number (1..R, or 0 for a single
--          postback), postbacks in it beyond the first, the value of "p"
-- Returns  the entry ids, in order; or {'REPLAY', stored record} when the
--          key was used before for the same body (nothing is written, but
--          for the record itself again when a WAIT follows, so that the
--          WAIT covers the first write); or the error "REUSED" (the key was
--          used for another body), "FULL" (ARGV[4] and not a replay), or
--          "COLLISION <address>" when the hash holds another record under
--          an address (nothing is written then).
--
-- A script runs without interruption, so other clients see all of a
-- request's entries, its records and its idempotency record, or none. With
-- maxmemory-policy noeviction an out-of-memory Redis refuses the script
-- before it writes.
local ttl = tonumber(ARGV[1])
if ttl > 0 then
  local stored = redis.call('GET', KEYS[5])
  if stored then
    local fingerprint = string.match(stored, '^[^:]*')
    if fingerprint ~= string.match(ARGV[2], '^[^:]*') then
      return redis.error_reply("REUSED the key was used before for another request body")
    end
    if ARGV[3] == '1' then
      redis.call('SET', KEYS[5], stored, 'KEEPTTL')
    end
    return {'REPLAY', stored}
  end
end
if ARGV[4] == '1' then
  return redis.error_reply('FULL not a replay')
end
local records = tonumber(ARGV[5])
local stored = {}
for r = 1, records do
  local have = redis.call('HGET', KEYS[2], ARGV[4 + 2 * r])
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
    redis.call('HSET', KEYS[2], ARGV[4 + 2 * r], ARGV[5 + 2 * r])
  end
  redis.call('HINCRBY', KEYS[3], ARGV[4 + 2 * r], n)
end
if extra > 0 then
  redis.call('INCRBY', KEYS[4], extra)
end
if ttl > 0 then
  redis.call('SET', KEYS[5], ARGV[2], 'EX', ttl)
end
return ids

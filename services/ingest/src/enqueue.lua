-- Appends the stream entries of several requests, each atomically; records
-- the endpoints that version 3 entries refer to, and a request's
-- idempotency record when it has a key. Ingest gathers the requests that
-- wait at one moment into one call (services/ingest/src/batch.rs): what a
-- script call costs Redis on its own is then paid once for all of them,
-- and so are the endpoint records' lookups (HGET) and reference counts
-- (HINCRBY). Whether the backlog or Redis's memory leaves room was decided
-- before, by ingest (services/ingest/src/gate.rs), so a request without a
-- key costs one XADD per entry here, and a handful of arguments.
-- Mirrors: postback_common::records::request (entries and their records),
-- ::endpoint (addresses and reference counts), ::stream_entry (field p).
-- KEYS[1]  the stream
-- KEYS[2]  the endpoint records (hash: address -> record)
-- KEYS[3]  the endpoint reference counts (hash: address -> references)
-- KEYS[4]  postbacks in the stream beyond one per entry (string)
-- KEYS[5]  the highest epoch of the partition record this partition was
--          shown (string; postback_common::layout)
-- KEYS[6…] the idempotency records of the requests that have a key
-- ARGV[1]  '1' when a WAIT follows (a replay then writes its record again)
-- ARGV[2]  the epoch of the partition record the callers chose this
--          partition by
-- ARGV[3]  R, the number of endpoint records of the call; then R pairs:
--          address, record
-- then for each request:
--   E            the number of its entries
--   K            the index in KEYS of its idempotency record (0: no key);
--                when K > 0:
--     ttl          seconds to keep the idempotency record
--     record       the idempotency record: "<body SHA-256>:<first id>:<count>"
--     replay only  '1' when only a replay may be answered (ingest would
--                  refuse the request as new: backlog or memory)
--   then E triples: record number (1..R, or 0 for a single postback),
--                postbacks in the entry beyond the first, the value of "p"
-- Returns  one flat array, each request's reply in turn:
--   'OK', then its E entry ids    queued
--   'REPLAY', record              the key was used before for the same
--                                 body: nothing is written, but for the
--                                 record itself again when a WAIT follows
--                                 (so that the WAIT covers the first write)
--   'REUSED'                      the key was used for another body
--   'FULL'                        replay only, and not a replay
--   'COLLISION', address          the hash holds another record under the
--                                 address of one of its entries' records
-- Or, for the whole call, 'STALE' when the partition was shown a newer
-- epoch than ARGV[2]: the callers' layout is out of date (the partition
-- may be draining), and nothing is written.
-- A request that is not queued writes nothing.
--
-- A script runs without interruption, so other clients see all of a
-- request's entries, its records and its idempotency record, or none. With
-- maxmemory-policy noeviction an out-of-memory Redis refuses the script
-- before it writes: every request of the call is refused then.

local wait = ARGV[1] == '1'
local epoch, shown = tonumber(ARGV[2]), tonumber(redis.call('GET', KEYS[5]) or '0')
if shown > epoch then
  return {'STALE'}
elseif epoch > shown then
  redis.call('SET', KEYS[5], ARGV[2])
end
local records = tonumber(ARGV[3])
-- Per record: whether it is stored already ('stored'), to be written with
-- its first entry ('new'), or clashes with another one (false); and the
-- references its entries take, added once at the end.
local state, refs = {}, {}
for r = 1, records do
  local have = redis.call('HGET', KEYS[2], ARGV[2 + 2 * r])
  if not have then
    state[r] = 'new'
  elseif have == ARGV[3 + 2 * r] then
    state[r] = 'stored'
  else
    state[r] = false
  end
  refs[r] = 0
end

local replies, extra = {}, 0
local function reply(...)
  for _, part in ipairs({...}) do
    replies[#replies + 1] = part
  end
end

-- The request whose entries start at `at`: nil when it may be queued, or
-- its reply when not. Looks up its key.
local function refusal(at, entries, key, ttl, record, replay_only)
  if key then
    local stored = redis.call('GET', key)
    if stored then
      if string.match(stored, '^[^:]*') ~= string.match(record, '^[^:]*') then
        return {'REUSED'}
      end
      if wait then
        redis.call('SET', key, stored, 'KEEPTTL')
      end
      return {'REPLAY', stored}
    end
  end
  if replay_only then
    return {'FULL'}
  end
  for i = at, at + 3 * (entries - 1), 3 do
    local r = tonumber(ARGV[i])
    if r > 0 and not state[r] then
      return {'COLLISION', ARGV[2 + 2 * r]}
    end
  end
  return nil
end

local at = 4 + 2 * records
while at <= #ARGV do
  local entries, k = tonumber(ARGV[at]), tonumber(ARGV[at + 1])
  local key, ttl, record, replay_only
  at = at + 2
  if k > 0 then
    key, ttl, record, replay_only = KEYS[k], tonumber(ARGV[at]), ARGV[at + 1], ARGV[at + 2] == '1'
    at = at + 3
  end
  local refused = refusal(at, entries, key, ttl, record, replay_only)
  if refused then
    reply(unpack(refused))
  else
    replies[#replies + 1] = 'OK'
    for i = at, at + 3 * (entries - 1), 3 do
      local r = tonumber(ARGV[i])
      extra = extra + tonumber(ARGV[i + 1])
      replies[#replies + 1] = redis.call('XADD', KEYS[1], '*', 'p', ARGV[i + 2])
      if r > 0 then
        if state[r] == 'new' then
          redis.call('HSET', KEYS[2], ARGV[2 + 2 * r], ARGV[3 + 2 * r])
          state[r] = 'stored'
        end
        refs[r] = refs[r] + 1
      end
    end
    if key then
      redis.call('SET', key, record, 'EX', ttl)
    end
  end
  at = at + 3 * entries
end
for r = 1, records do
  if refs[r] > 0 then
    redis.call('HINCRBY', KEYS[3], ARGV[2 + 2 * r], refs[r])
  end
end
if extra > 0 then
  redis.call('INCRBY', KEYS[4], extra)
end
return replies

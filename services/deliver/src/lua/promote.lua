#!lua flags=allow-oom
-- Moves retries that are due from the schedule back into the stream, where
-- any worker picks them up. Each move (XDEL from its level, XADD of the
-- same fields to the stream) happens inside this one script, so a retry is
-- never lost and never moved twice, whichever worker runs it and whenever
-- one dies. Deletions come before appends (what frees memory first); it
-- runs at maxmemory too (allow-oom): a move takes about what it frees.
--
-- Mirrors: postback_common::records::schedule (levels: an entry of the
-- level '@<D>' with id '<ms>-<seq>' is due at ms + D; the index scores
-- each level by its oldest entry's due time; the count of postbacks in
-- the levels; the old one-member-per-postback schedule), ::stream_entry
-- (a level entry's fields are the stream entry's, copied as they are) and
-- ::retried (a version 5 value holds as many postbacks as its offsets
-- bin has bytes, at bytes 31 and 32).
-- KEYS[1]  the schedule's index (its levels: KEYS[1] .. ':@<ms>')
-- KEYS[2]  the stream
-- KEYS[3]  postbacks in the schedule's levels (string)
-- KEYS[4]  postbacks waiting in the stream beyond one per entry (string)
-- KEYS[5]  the schedule before levels: sorted set of
--          '<attempts>:<first attempt ms>:<p bytes>', scored by due time
-- KEYS[6]  the dead-letter stream (for an old member this code did not
--          write; the letter has the fields of ::dead_letter)
-- ARGV[1]  most entries moved per call
-- Returns  {entries moved, ms until the next retry is due or -1 when none is}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local budget = tonumber(ARGV[1])
local moved, postbacks, extra = 0, 0, 0

local function count_of(fields)
  for f = 1, #fields, 2 do
    if fields[f] == 'p' then
      local p = fields[f + 1]
      local head, version = string.byte(p, 1, 2)
      if (head == 0x97 or head == 0x98) and version == 5 and string.byte(p, 31) == 0xc4 then
        return string.byte(p, 32)
      end
      return 1
    end
  end
  return 1
end

for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, budget)) do
  if moved >= budget then
    break
  end
  local delay = tonumber(string.sub(member, 2))
  local level = KEYS[1] .. ':' .. member
  local due = redis.call('XRANGE', level, '-', math.max(0, now - delay), 'COUNT', budget - moved)
  if #due > 0 then
    local ids = {}
    for k, entry in ipairs(due) do
      ids[k] = entry[1]
    end
    redis.call('XDEL', level, unpack(ids))
    for _, entry in ipairs(due) do
      redis.call('XADD', KEYS[2], '*', unpack(entry[2]))
      local n = count_of(entry[2])
      postbacks = postbacks + n
      extra = extra + n - 1
    end
    moved = moved + #due
  end
  local head = redis.call('XRANGE', level, '-', '+', 'COUNT', 1)
  if #head == 0 then
    redis.call('DEL', level)
    redis.call('ZREM', KEYS[1], member)
  else
    redis.call('ZADD', KEYS[1], tonumber(string.match(head[1][1], '^(%d+)')) + delay, member)
  end
end

-- The schedule as it was before levels, until it is empty.
if moved < budget then
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now, 'LIMIT', 0, budget - moved)) do
    redis.call('ZREM', KEYS[5], member)
    local i = string.find(member, ':', 1, true)
    local j = i and string.find(member, ':', i + 1, true)
    if j then
      redis.call('XADD', KEYS[2], '*',
        'p', string.sub(member, j + 1),
        'a', string.sub(member, 1, i - 1),
        'f', string.sub(member, i + 1, j - 1))
    else
      redis.call('XADD', KEYS[6], '*', 'category', 'undecodable', 'reason', 'malformed retry schedule member',
        'raw', member)
    end
    moved = moved + 1
  end
end

if postbacks > 0 and redis.call('DECRBY', KEYS[3], postbacks) <= 0 then
  redis.call('DEL', KEYS[3])
end
if extra > 0 then
  redis.call('INCRBY', KEYS[4], extra)
end

local wait = -1
for _, key in ipairs({KEYS[1], KEYS[5]}) do
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if first[2] then
    local ms = math.max(0, tonumber(first[2]) - now)
    if wait < 0 or ms < wait then
      wait = ms
    end
  end
end
return {moved, wait}

-- Moves retries that are due from the schedule back into the stream, where
-- any worker picks them up. Each move (XADD, then ZREM of the same member)
-- happens inside this one script, so a retry is never lost and never moved
-- twice, whichever worker runs it and whenever one dies.
-- KEYS[1]  the retry schedule (sorted set, score = due time in ms)
-- KEYS[2]  the stream
-- KEYS[3]  the dead-letter stream (for a member this code did not write; the
--          letter has the fields of postback_common::records::dead_letter)
-- ARGV[1]  most retries moved per call
-- Returns  {moved, ms until the next retry is due or -1 when none is}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- Nothing due (the common case when idle): one look at the earliest retry.
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if not first[2] then
  return {0, -1}
end
if tonumber(first[2]) > now then
  return {0, tonumber(first[2]) - now}
end
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, member in ipairs(due) do
  local i = string.find(member, ':', 1, true)
  local j = i and string.find(member, ':', i + 1, true)
  if j then
    redis.call('XADD', KEYS[2], '*',
      'p', string.sub(member, j + 1),
      'a', string.sub(member, 1, i - 1),
      'f', string.sub(member, i + 1, j - 1))
  else
    redis.call('XADD', KEYS[3], '*', 'category', 'undecodable', 'reason', 'malformed retry schedule member',
      'raw', member)
  end
  redis.call('ZREM', KEYS[1], member)
end
local next = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wait = -1
if next[2] then
  wait = math.max(0, tonumber(next[2]) - now)
end
return {#due, wait}

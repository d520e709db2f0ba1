-- Finishes an entry whose attempt failed (or could not start) by scheduling
-- it again, atomically: the retry is added and the entry acknowledged and
-- deleted in one step, so it is never lost and never both pending and
-- scheduled. For one postback of a version 3 entry the entry id is empty:
-- the entry stays pending until all of its postbacks are finished.
-- KEYS[1]  the stream
-- KEYS[2]  the retry schedule (sorted set, score = due time in ms)
-- ARGV[1]  the consumer group
-- ARGV[2]  the entry id, or ''
-- ARGV[3]  delay in ms
-- ARGV[4]  the schedule member: "<attempts>:<first attempt ms>:<postback bytes>"
-- Returns  the due time (ms, Redis clock).
local t = redis.call('TIME')
local due = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[3])
redis.call('ZADD', KEYS[2], due, ARGV[4])
if ARGV[2] ~= '' then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  redis.call('XDEL', KEYS[1], ARGV[2])
end
return due

-- Finishes an entry whose attempt failed (or could not start) by scheduling
-- it again, atomically: the retry is added and the entry acknowledged and
-- deleted in one step, so it is never lost and never both pending and
-- scheduled.
-- KEYS[1]  the stream
-- KEYS[2]  the retry schedule (sorted set, score = due time in ms)
-- ARGV[1]  the consumer group
-- ARGV[2]  the entry id
-- ARGV[3]  delay in ms
-- ARGV[4]  the schedule member: "<attempts>:<first attempt ms>:<postback bytes>"
-- Returns  the due time (ms, Redis clock).
local t = redis.call('TIME')
local due = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[3])
redis.call('ZADD', KEYS[2], due, ARGV[4])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return due

#!lua flags=allow-oom
-- Whether a draining partition is empty, after showing it the partition
-- record's epoch: from then on ingest's enqueue script refuses any caller
-- still routing by an older record, so nothing new can arrive from
-- outside, and what this returns stays true until the partition is
-- retired. One script, so a postback moving between the stream and the
-- schedule is seen in one place or the other.
-- Mirrors: postback_common::layout (epochs, states), ingest's enqueue.lua.
-- KEYS[1]  the partition's epoch ({tag}:layout)
-- KEYS[2]  its stream
-- KEYS[3]  its retry schedule (sorted set of levels)
-- KEYS[4]  postbacks in the schedule's levels (string)
-- KEYS[5]  the schedule from before levels (sorted set)
-- KEYS[6]  its dead letters
-- ARGV[1]  the record's epoch
-- ARGV[2]  the consumer group
-- Returns  {entries, pending, scheduled levels, scheduled postbacks,
--          old schedule, dead letters}
local shown = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > shown then
  redis.call('SET', KEYS[1], ARGV[1])
end
local pending = 0
if redis.call('EXISTS', KEYS[2]) == 1 then
  local summary = redis.pcall('XPENDING', KEYS[2], ARGV[2])
  if type(summary) == 'table' and not summary.err then
    pending = summary[1]
  end
end
return {
  redis.call('XLEN', KEYS[2]), pending, redis.call('ZCARD', KEYS[3]),
  tonumber(redis.call('GET', KEYS[4]) or '0'), redis.call('ZCARD', KEYS[5]),
  redis.call('XLEN', KEYS[6]),
}

-- Shows a partition an epoch: it keeps the highest it was shown, so that
-- ingest's enqueue script refuses callers with an older layout.
-- Mirrors: postback_common::layout (epochs), ingest's enqueue.lua (the check).
-- KEYS[1]  the partition's epoch ({tag}:layout)
-- ARGV[1]  the epoch
-- Returns the partition's epoch after the call.
local have = tonumber(redis.call('GET', KEYS[1]) or '0')
local epoch = tonumber(ARGV[1])
if epoch > have then
  redis.call('SET', KEYS[1], ARGV[1])
  return epoch
end
return have

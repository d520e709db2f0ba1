-- Heals the counts kept beside a stream that is empty: nothing waits, so
-- nothing is counted as batched or partly finished. An entry deleted by
-- hand (or a stream deleted whole) otherwise leaves its counts behind.
-- Mirrors: postback_common::records::finished (the positions hash) and the
-- batched count of ::request.
-- KEYS[1]  the stream
-- KEYS[2]  postbacks waiting in the stream beyond one per entry (string)
-- KEYS[3]  finished positions (hash: entry id -> bitmap)
-- Returns  the number of keys removed
if redis.call('XLEN', KEYS[1]) == 0 then
  return redis.call('DEL', KEYS[2], KEYS[3])
end
return 0

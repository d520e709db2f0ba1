-- Appends one stream entry per postback, atomically.
-- KEYS[1]  the stream
-- ARGV     the MessagePack postbacks, one per entry (field "p")
-- Returns  the entry ids, in ARGV order.
--
-- A script runs without interruption, so other clients see all of a
-- request's entries or none. With maxmemory-policy noeviction an
-- out-of-memory Redis refuses the first XADD, before anything is written.
local ids = {}
for i = 1, #ARGV do
  ids[i] = redis.call('XADD', KEYS[1], '*', 'p', ARGV[i])
end
return ids

-- Appends one stream entry per postback, atomically, unless the backlog is
-- full.
-- KEYS[1]  the stream
-- KEYS[2]  the retry schedule (sorted set)
-- ARGV[1]  the largest backlog accepted (0: no limit)
-- ARGV[2…] the MessagePack postbacks, one per entry (field "p")
-- Returns  the entry ids, in ARGV order, or the error "BACKLOG <n>".
--
-- A script runs without interruption, so other clients see all of a
-- request's entries or none. With maxmemory-policy noeviction an
-- out-of-memory Redis refuses the first XADD, before anything is written.
local max = tonumber(ARGV[1])
if max > 0 then
  -- Delivered entries are deleted, so the stream holds exactly what is
  -- waiting for a first or a repeated attempt; retries wait in KEYS[2].
  local backlog = redis.call('XLEN', KEYS[1]) + redis.call('ZCARD', KEYS[2])
  if backlog >= max then
    return redis.error_reply('BACKLOG ' .. backlog)
  end
end
local ids = {}
for i = 2, #ARGV do
  ids[i - 1] = redis.call('XADD', KEYS[1], '*', 'p', ARGV[i])
end
return ids

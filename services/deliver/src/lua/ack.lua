-- Finishes delivered entries: acknowledges and deletes them, and lets go of
-- the endpoint records that version 3 entries among them referred to.
-- KEYS[1]  the stream
-- KEYS[2]  the endpoint records (hash: address -> record)
-- KEYS[3]  the endpoint reference counts (hash: address -> entries)
-- KEYS[4]  postbacks in the stream beyond one per entry (string)
-- ARGV[1]  the consumer group
-- then one triple per entry: entry id, endpoint address ('' for a single
--          postback), postbacks in it beyond the first
-- Returns  the number of entries deleted.
--
-- A record's count goes down only for an entry this call really deleted,
-- so an entry finished twice (a worker taken over while it was still
-- delivering) is counted once. A record goes with its last reference; a
-- count that would go below zero (someone deleted the counts by hand) is
-- dropped, and the record kept: unused records cost memory, missing ones
-- would cost postbacks.
local ids = {}
-- Entries of the same record and size are deleted together: XDEL says how
-- many of them it really deleted, which is all the counts need.
local groups = {}
local order = {}
for i = 2, #ARGV, 3 do
  ids[#ids + 1] = ARGV[i]
  local group = ARGV[i + 1] .. ' ' .. ARGV[i + 2]
  if not groups[group] then
    groups[group] = {}
    order[#order + 1] = {ARGV[i + 1], tonumber(ARGV[i + 2]), group}
  end
  local members = groups[group]
  members[#members + 1] = ARGV[i]
end
redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))
local deleted = 0
local extra = 0
for _, g in ipairs(order) do
  local address, rows, members = g[1], g[2], groups[g[3]]
  local n = redis.call('XDEL', KEYS[1], unpack(members))
  deleted = deleted + n
  extra = extra + n * rows
  if n > 0 and address ~= '' then
    local left = redis.call('HINCRBY', KEYS[3], address, -n)
    if left <= 0 then
      redis.call('HDEL', KEYS[3], address)
      if left == 0 then
        redis.call('HDEL', KEYS[2], address)
      end
    end
  end
end
if extra > 0 and redis.call('DECRBY', KEYS[4], extra) <= 0 then
  redis.call('DEL', KEYS[4])
end
return deleted

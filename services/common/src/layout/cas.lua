-- Replaces the partition record if nobody changed it since it was read.
-- Mirrors: postback_common::layout (the record, its epoch).
-- KEYS[1]  the record (<stream>:partitions)
-- ARGV[1]  the epoch it had when read, or '' when there was none
-- ARGV[2]  the new record
-- Returns 1 when written, 0 when the record changed meanwhile.
local have = redis.call('GET', KEYS[1])
if ARGV[1] == '' then
  if have then return 0 end
elseif not have or tostring(cjson.decode(have).epoch) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2])
return 1

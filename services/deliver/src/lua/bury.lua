-- Finishes an entry that will not be delivered: appends it to the
-- dead-letter stream and acknowledges and deletes it, in one step. For one
-- postback of a version 3 entry the entry id is empty: only the letter is
-- added, and the entry stays pending until all of its postbacks are
-- finished.
-- KEYS[1]  the stream
-- KEYS[2]  the dead-letter stream
-- ARGV[1]  the consumer group
-- ARGV[2]  the entry id, or ''
-- ARGV[3…] field, value, field, value… of the dead-letter entry
-- Returns  the dead-letter entry's id.
local id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3))
if ARGV[2] ~= '' then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  redis.call('XDEL', KEYS[1], ARGV[2])
end
return id

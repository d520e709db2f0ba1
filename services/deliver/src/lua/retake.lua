#!lua flags=allow-oom
-- Hands this consumer entries of its own pending list again, to handle
-- them anew (after a restart, a reconnect, a failed read, or a claim).
-- Only entries still this consumer's are taken: one another worker took
-- over since the caller listed it stays with that worker.
-- Mirrors: services/deliver/src/intake.rs.
-- KEYS[1]  the stream
-- ARGV[1]  the consumer group
-- ARGV[2]  this consumer
-- ARGV[3…] the entry ids
-- Returns  the entries as XRANGE shows them (each handed out once more:
--          XCLAIM counts a delivery); an entry deleted while pending comes
--          back without fields and stays pending, for the worker to let go.
local out, claim = {}, {}
for i = 3, #ARGV do
  local id = ARGV[i]
  local row = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)[1]
  if row and row[2] == ARGV[2] then
    if #redis.call('XRANGE', KEYS[1], id, id) == 0 then
      out[#out + 1] = {id, {}}
    else
      claim[#claim + 1] = id
    end
  end
end
if #claim > 0 then
  for _, entry in ipairs(redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, unpack(claim))) do
    out[#out + 1] = entry
  end
end
return out

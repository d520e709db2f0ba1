-- Puts one dead letter back into the stream as fresh postbacks (no attempt
-- count), and removes it from the dead-letter stream, in one step: run twice
-- for the same id, the second run finds nothing, so a letter is redriven
-- exactly once.
--
-- A letter holding a whole version 3 entry (dead-lettered as poison) goes
-- back as that entry: its endpoint record must still be there (the letter
-- kept its reference count, which now counts the entry again), and its
-- postbacks beyond the first are counted as waiting, as ingest counts them.
-- KEYS[1]  the dead-letter stream
-- KEYS[2]  the stream
-- KEYS[3]  the endpoint records (hash: address -> record)
-- KEYS[4]  postbacks waiting in the stream beyond one per entry (string)
-- ARGV[1]  the dead letter's id
-- Returns  the new stream entry id, or an error "NOTFOUND", "NOPAYLOAD" or
--          "NORECORD", followed by why.
local entries = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #entries == 0 then
  return redis.error_reply('NOTFOUND no dead letter ' .. ARGV[1])
end
local fields = entries[1][2]
local payload
for i = 1, #fields, 2 do
  if fields[i] == 'p' then
    payload = fields[i + 1]
  end
end
if not payload then
  return redis.error_reply('NOPAYLOAD dead letter ' .. ARGV[1] .. ' holds no postback')
end

-- A version 3 entry: array of 5 or 6, version 3, bin 16 (the first id),
-- bin 8 (the record's address), then the count (fixint, or uint 8).
local extra = 0
local b = {string.byte(payload, 1, 32)}
if (b[1] == 0x95 or b[1] == 0x96) and b[2] == 3 and b[3] == 0xc4 and b[4] == 16 and b[21] == 0xc4 and b[22] == 8 then
  local address = ''
  for i = 23, 30 do
    address = address .. string.format('%02x', b[i])
  end
  local count = b[31]
  if count == 0xcc then
    count = b[32]
  end
  count = count or 1
  if redis.call('HEXISTS', KEYS[3], address) == 0 then
    return redis.error_reply('NORECORD dead letter ' .. ARGV[1] .. ' refers to endpoint record ' .. address ..
      ', which is gone from ' .. KEYS[3])
  end
  extra = count - 1
end
local id = redis.call('XADD', KEYS[2], '*', 'p', payload)
if extra > 0 then
  redis.call('INCRBY', KEYS[4], extra)
end
redis.call('XDEL', KEYS[1], ARGV[1])
return id

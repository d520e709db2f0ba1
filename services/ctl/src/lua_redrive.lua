-- Puts one dead letter back into the stream as fresh postbacks (no attempt
-- count), and removes it from the dead-letter stream, in one step: run twice
-- for the same id, the second run finds nothing, so a letter is redriven
-- exactly once.
--
-- A letter whose `p` is a version 3 or 5 value (a postback of a request, or
-- a whole entry) refers to an endpoint record, which must still be there:
-- the letter's reference to it becomes the new entry's. A version 5 value
-- goes back with its attempts and first attempt set to 0. Postbacks beyond
-- the first are counted as waiting, as ingest counts them.
-- Mirrors: postback_common::records::dead_letter (field p), ::request and
-- ::retried (the layouts: version, first id, then the record's address at
-- bytes 22 to 29, 0-based; then a version 3 count, or the version 5
-- offsets bin, attempts and first attempt).
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

-- A positive MessagePack integer's length, from its first byte.
local function uint_length(byte)
  if byte < 0x80 then
    return 1
  end
  return ({[0xcc] = 2, [0xcd] = 3, [0xce] = 5, [0xcf] = 9})[byte]
end

local extra = 0
local b = {string.byte(payload, 1, 32)}
local v3 = (b[1] == 0x95 or b[1] == 0x96) and b[2] == 3
local v5 = (b[1] == 0x97 or b[1] == 0x98) and b[2] == 5
if (v3 or v5) and b[3] == 0xc4 and b[4] == 16 and b[21] == 0xc4 and b[22] == 8 then
  local address = ''
  for i = 23, 30 do
    address = address .. string.format('%02x', b[i])
  end
  if redis.call('HEXISTS', KEYS[3], address) == 0 then
    return redis.error_reply('NORECORD dead letter ' .. ARGV[1] .. ' refers to endpoint record ' .. address ..
      ', which is gone from ' .. KEYS[3])
  end
  local count = 1
  if v3 then
    count = b[31]
    if count == 0xcc then
      count = b[32]
    end
  elseif b[31] == 0xc4 then
    count = b[32]
    -- attempts and first attempt, after the offsets: both 0 again.
    local at = 33 + count
    local attempts = uint_length(string.byte(payload, at) or 0)
    local first = attempts and uint_length(string.byte(payload, at + attempts) or 0)
    if first then
      payload = string.sub(payload, 1, at - 1) .. '\0\0' .. string.sub(payload, at + attempts + first)
    end
  end
  extra = (count or 1) - 1
end
local id = redis.call('XADD', KEYS[2], '*', 'p', payload)
if extra > 0 then
  redis.call('INCRBY', KEYS[4], extra)
end
redis.call('XDEL', KEYS[1], ARGV[1])
return id

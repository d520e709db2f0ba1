#!lua flags=allow-oom
-- Trims the dead-letter stream to what POSTBACK_DEAD_RETENTION keeps, a
-- page at a time, and gives back the endpoint record references of the
-- letters it removes: a letter whose `p` is a version 3 or 5 value (a
-- postback of a request, or a whole entry) holds one on the record whose
-- address it carries at bytes 22 to 29 (0-based), where both versions have
-- it. A record goes with its last reference.
-- Mirrors: postback_common::records::dead_letter (field p),
-- ::request and ::retried (where the address is), ::endpoint (counts).
-- KEYS[1]  the dead-letter stream
-- KEYS[2]  the endpoint records (hash: address -> record)
-- KEYS[3]  the endpoint reference counts (hash: address -> references)
-- ARGV[1]  'age' (ARGV[2]: letters written before this ms go) or 'count'
--          (ARGV[2]: the newest this many stay)
-- ARGV[3]  most letters removed per call
-- Returns  letters removed (fewer than ARGV[3]: nothing more to trim)
local page = tonumber(ARGV[3])
local letters
if ARGV[1] == 'age' then
  local before = tonumber(ARGV[2]) - 1
  if before < 0 then
    return 0
  end
  letters = redis.call('XRANGE', KEYS[1], '-', before, 'COUNT', page)
else
  local excess = redis.call('XLEN', KEYS[1]) - tonumber(ARGV[2])
  if excess <= 0 then
    return 0
  end
  letters = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', math.min(excess, page))
end
if #letters == 0 then
  return 0
end
local ids, refs, order = {}, {}, {}
for k, letter in ipairs(letters) do
  ids[k] = letter[1]
  local fields = letter[2]
  for f = 1, #fields, 2 do
    if fields[f] == 'p' then
      local p = fields[f + 1]
      local head, version = string.byte(p, 1, 2)
      local refers = (version == 3 and (head == 0x95 or head == 0x96)) or (version == 5 and (head == 0x97 or head == 0x98))
      if refers and #p >= 30 and string.byte(p, 21) == 0xc4 and string.byte(p, 22) == 8 then
        local address = ''
        for b = 23, 30 do
          address = address .. string.format('%02x', string.byte(p, b))
        end
        if not refs[address] then
          refs[address] = 0
          order[#order + 1] = address
        end
        refs[address] = refs[address] + 1
      end
    end
  end
end
redis.call('XDEL', KEYS[1], unpack(ids))
for _, address in ipairs(order) do
  local left = redis.call('HINCRBY', KEYS[3], address, -refs[address])
  if left <= 0 then
    redis.call('HDEL', KEYS[3], address)
    if left == 0 then
      redis.call('HDEL', KEYS[2], address)
    end
  end
end
return #letters

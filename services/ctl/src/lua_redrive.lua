-- Puts one dead letter back into the stream as a fresh postback (no attempt
-- count), and removes it from the dead-letter stream, in one step: run twice
-- for the same id, the second run finds nothing, so a letter is redriven
-- exactly once.
-- KEYS[1]  the dead-letter stream
-- KEYS[2]  the stream
-- ARGV[1]  the dead letter's id
-- Returns  the new stream entry id, or an error "NOTFOUND" / "NOPAYLOAD".
local entries = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #entries == 0 then
  return redis.error_reply('NOTFOUND no dead letter ' .. ARGV[1])
end
local fields = entries[1][2]
for i = 1, #fields, 2 do
  if fields[i] == 'p' then
    local id = redis.call('XADD', KEYS[2], '*', 'p', fields[i + 1])
    redis.call('XDEL', KEYS[1], ARGV[1])
    return id
  end
end
return redis.error_reply('NOPAYLOAD dead letter ' .. ARGV[1] .. ' holds no postback')

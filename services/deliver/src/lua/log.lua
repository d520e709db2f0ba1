-- A batch of delivery-log entries in one call.
-- KEYS[1]  the delivery-log stream
-- ARGV[1]  its cap (MAXLEN ~)
-- ARGV[2…] per entry: its number of fields n, then n names and n values
--          interleaved (name, value, name, value, …)
-- Returns  the number of entries written
local cap = ARGV[1]
local i = 2
local written = 0
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  local args = {KEYS[1], 'MAXLEN', '~', cap, '*'}
  for j = 1, 2 * n do
    args[#args + 1] = ARGV[i + j]
  end
  redis.call('XADD', unpack(args))
  written = written + 1
  i = i + 1 + 2 * n
end
return written

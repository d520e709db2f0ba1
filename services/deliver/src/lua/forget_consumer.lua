-- Removes a consumer from the group if, and only if, it holds nothing and
-- has been idle long enough, in one step: a consumer that read an entry
-- between a look and the removal would otherwise lose that entry from the
-- pending list for good (XGROUP DELCONSUMER drops what it holds).
-- Mirrors: no record of ours (the consumer group's own state).
-- KEYS[1]  the stream
-- ARGV[1]  the consumer group
-- ARGV[2]  the consumer
-- ARGV[3]  least idle time, in ms
-- Returns  1 when removed, 0 when left alone.
local consumers = redis.pcall('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if type(consumers) ~= 'table' or consumers.err then
  return 0 -- no stream or no group: nothing to remove
end
for _, c in ipairs(consumers) do
  local info = {}
  for i = 1, #c, 2 do
    info[c[i]] = c[i + 1]
  end
  if info['name'] == ARGV[2] then
    -- Redis 7.2 and later report 'inactive' (since the last successful
    -- read); older ones only 'idle'.
    local idle = tonumber(info['inactive'] or info['idle'])
    if idle and idle < 0 then
      idle = tonumber(info['idle'])
    end
    if tonumber(info['pending']) == 0 and idle and idle >= tonumber(ARGV[3]) then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
      return 1
    end
    return 0
  end
end
return 0

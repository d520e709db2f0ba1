-- One rate budget, by GCRA (the generic cell rate algorithm), on Redis's
-- clock so that every process charging it shares one budget: a caller's at
-- ingest, a target host's at deliver.
-- Mirrors: postback_common::gcra (the budget's key and value).
-- KEYS[1]  the budget's theoretical arrival time, in microseconds (string)
-- ARGV[1]  T, microseconds per postback (1e6 / rate)
-- ARGV[2]  the burst, in postbacks
-- ARGV[3]  this charge, in postbacks
-- Returns  {allowed (1 or 0), microseconds until it would be allowed,
--           postbacks left in the burst after this request, microseconds
--           until the burst is whole again}
--
-- A request is allowed when the bucket holds its cost, or when the bucket
-- is whole (a request larger than the burst then passes, and the
-- following seconds pay for it): no request is refused for ever.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local tolerance = burst * interval
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then
  tat = now
end
local after = tat + cost * interval
local allow_at = after - tolerance
if allow_at > now and tat > now then
  local wait = allow_at - now
  if cost > burst then
    wait = tat - now
  end
  local left = math.max(0, math.floor((now + tolerance - tat) / interval))
  return {0, math.ceil(wait), left, math.ceil(tat - now)}
end
redis.call('SET', KEYS[1], string.format('%d', after), 'PX', math.ceil((after - now) / 1000) + 1)
local left = math.max(0, math.floor((now + tolerance - after) / interval))
return {1, 0, left, math.ceil(after - now)}

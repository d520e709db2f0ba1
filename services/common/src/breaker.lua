-- Per-host circuit breakers, shared by every worker and postbackctl.
-- Mirrors: postback_common::breaker (the host's record and the open set).
-- KEYS[1]  the host's record: a hash {failures, state, pause_ms, until,
--          probe_until}, expiring a while after its last change
-- KEYS[2]  the hosts not closed: a sorted set, member the host, score the
--          time (ms) its pause ends (+inf for a pause by hand)
-- ARGV[1]  the operation: failed | succeeded | probe | pause | resume | look
-- ARGV[2]  the host (host:port)
-- failed:    ARGV[3] failures that open it, ARGV[4] first pause (ms),
--            ARGV[5] longest pause (ms), ARGV[6] the least the pause may
--            be (ms; the host's Retry-After, 0 without one): a pause is
--            never shorter than what the host asked for
-- look:      KEYS[1] is unused (any key of the slot); forgets members of
--            the open set whose record is gone, and returns {Redis's time
--            (ms), host, pause end, host, pause end, …} (pause end -1 when
--            paused by hand), so every worker compares pause ends with the
--            clock that wrote them
-- probe:     ARGV[3] how long a probe may take (ms) before another worker
--            may probe instead
-- Returns  {state, failures, until (ms, 0 when closed), changed (1 when this
--          call moved it to another state)}; for probe, state 'probe' when
--          this caller is to send the probe.
-- States: closed (no record, or failures below the mark), open (paused
-- until `until`), half_open (a probe is out), paused (by hand).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local op, host = ARGV[1], ARGV[2]
local KEEP_MS = 3600000

if op == 'look' then
  local out = {now}
  local members = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
  local prefix = ARGV[2]
  for i = 1, #members, 2 do
    local member, score = members[i], members[i + 1]
    -- A record expires a while after its pause ends; its member would
    -- otherwise stay until some other host's breaker changes.
    if redis.call('EXISTS', prefix .. member) == 0 then
      redis.call('ZREM', KEYS[2], member)
    else
      out[#out + 1] = member
      out[#out + 1] = (score == 'inf') and -1 or tonumber(score)
    end
  end
  return out
end
local rec = redis.call('HMGET', KEYS[1], 'failures', 'state', 'pause_ms', 'until', 'probe_until')
local failures = tonumber(rec[1]) or 0
local state = rec[2] or 'closed'
local pause = tonumber(rec[3]) or 0
local till = tonumber(rec[4]) or 0
local probe_until = tonumber(rec[5]) or 0

local function save(keep)
  redis.call('HSET', KEYS[1], 'failures', failures, 'state', state, 'pause_ms', pause, 'until', till,
    'probe_until', probe_until)
  redis.call('PEXPIRE', KEYS[1], keep)
  if state == 'closed' then
    redis.call('ZREM', KEYS[2], host)
  elseif state == 'paused' then
    redis.call('ZADD', KEYS[2], '+inf', host)
  else
    redis.call('ZADD', KEYS[2], till, host)
  end
  -- Hosts paused long ago and never tried since: forgotten.
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - KEEP_MS)
end

local function close()
  local was = state
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], host)
  return {'closed', 0, 0, (was ~= 'closed') and 1 or 0}
end

if op == 'failed' then
  local mark, first, longest = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
  local least = tonumber(ARGV[6]) or 0
  failures = failures + 1
  if state == 'half_open' then
    -- The probe failed: paused again, twice as long (and at least what
    -- the host asked for).
    pause = math.min(math.max(pause, first) * 2, longest)
    state, till, probe_until = 'open', now + math.max(pause, least), 0
    save(till - now + KEEP_MS)
    return {state, failures, till, 1}
  end
  if state == 'closed' and failures >= mark then
    pause = first
    state, till = 'open', now + math.max(pause, least)
    save(till - now + KEEP_MS)
    return {state, failures, till, 1}
  end
  if state == 'open' and now + least > till then
    -- An attempt still in flight when it opened, answered with a longer
    -- Retry-After: the pause lasts that long.
    till = now + least
  end
  save(math.max(till - now, pause, 0) + KEEP_MS)
  return {state, failures, (state == 'closed') and 0 or till, 0}
elseif op == 'succeeded' then
  if state == 'paused' then
    return {state, failures, 0, 0}
  end
  if rec[2] then
    return close()
  end
  return {'closed', 0, 0, 0}
elseif op == 'probe' then
  if state == 'closed' or state == 'paused' then
    return {state, failures, (state == 'paused') and -1 or 0, 0}
  end
  if (state == 'open' and now >= till) or (state == 'half_open' and now >= probe_until) then
    local changed = (state == 'open') and 1 or 0
    state, probe_until = 'half_open', now + tonumber(ARGV[3])
    save(pause + KEEP_MS)
    return {'probe', failures, probe_until, changed}
  end
  return {state, failures, (state == 'open') and till or probe_until, 0}
elseif op == 'pause' then
  local changed = (state ~= 'paused') and 1 or 0
  state, till = 'paused', 0
  save(KEEP_MS * 24 * 365)
  redis.call('PERSIST', KEYS[1])
  return {state, failures, -1, changed}
elseif op == 'resume' then
  return close()
end
return redis.error_reply('ERR unknown breaker operation ' .. tostring(op))

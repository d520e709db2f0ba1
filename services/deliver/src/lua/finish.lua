-- Finishes postbacks of stream entries that one worker holds. Every way a
-- postback ends (delivered, scheduled again, dead-lettered) goes through
-- this script, which is what makes each happen exactly once:
--
-- * Ownership: only entries pending with this consumer are touched. An
--   entry another worker has claimed, or one no longer pending at all, is
--   left alone and named in the reply.
-- * Each postback's outcome is recorded in its entry: a position already
--   finished is skipped, so a retried call (a reply lost on the way back)
--   or a worker that claims the entry never finishes a postback twice.
--   Entries of several postbacks keep the finished positions in a hash
--   (KEYS[7]) until their last postback is finished.
-- * An entry leaves the stream (XACK + XDEL) with its last postback, in the
--   same call; its endpoint record's count goes down then, and the record
--   goes with its last reference, unless the entry itself was
--   dead-lettered whole (the letter still refers to the record).
-- * KEYS[6] stays equal to the postbacks waiting in the stream beyond one
--   per entry: it goes down by one for every postback finished, except the
--   last of its entry (the entry's own place in XLEN goes then).
--
-- KEYS[1]  the stream
-- KEYS[2]  the retry schedule (sorted set, score = due time in ms)
-- KEYS[3]  the dead-letter stream
-- KEYS[4]  the endpoint records (hash: address -> record)
-- KEYS[5]  the endpoint reference counts (hash: address -> entries)
-- KEYS[6]  postbacks waiting in the stream beyond one per entry (string)
-- KEYS[7]  finished positions (hash: entry id -> bitmap, see below)
-- ARGV[1]  the consumer group
-- ARGV[2]  this worker's consumer name
-- ARGV[3]  the lowest and ARGV[4] the highest of the entries' ids
-- ARGV[5]  the number of entries
-- then for each entry: its id, its number of postbacks, its endpoint record
--          address ('' for none), the number of operations, the operations
-- an operation: a position (0-based, or '*' for every postback of the
--          entry), then one of
--            'a'                              delivered
--            'r', delay ms, schedule member   scheduled again
--            'd', 2n, n field/value pairs     dead-lettered; with '*' the
--                                             entry is dead-lettered whole
-- Returns  {entries deleted, ids taken over by another consumer, ids no
--          longer pending at all}
--
-- The bitmap: position p is bit (7 - p % 8) of byte p // 8, as SETBIT
-- numbers bits.

-- Redis's clock, read once and only if a retry is scheduled.
local now
local function due(delay)
  if not now then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return now + delay
end

-- Which of the entries this consumer holds: its pending entries between the
-- lowest and the highest id, page by page (usually one page).
local held = {}
local start, page = ARGV[3], 2 * tonumber(ARGV[5]) + 64
while true do
  local rows = redis.pcall('XPENDING', KEYS[1], ARGV[1], start, ARGV[4], page, ARGV[2])
  if type(rows) ~= 'table' or rows.err then
    break -- no stream or no group (NOGROUP): nothing is held
  end
  for _, row in ipairs(rows) do
    held[row[1]] = true
  end
  if #rows < page then
    break
  end
  start = '(' .. rows[#rows][1]
end

local function load_bits(id, count)
  local done, n = {}, 0
  if count > 1 then
    local bits = redis.call('HGET', KEYS[7], id)
    if bits then
      for p = 0, count - 1 do
        local byte = string.byte(bits, math.floor(p / 8) + 1)
        if byte and bit.band(byte, bit.rshift(128, p % 8)) ~= 0 then
          done[p] = true
          n = n + 1
        end
      end
    end
  end
  return done, n
end

local function store_bits(id, count, done)
  local bytes = {}
  for b = 1, math.floor((count + 7) / 8) do
    bytes[b] = 0
  end
  for p = 0, count - 1 do
    if done[p] then
      local b = math.floor(p / 8) + 1
      bytes[b] = bit.bor(bytes[b], bit.rshift(128, p % 8))
    end
  end
  redis.call('HSET', KEYS[7], id, string.char(unpack(bytes)))
end

-- Entries whose last postback is finished are acknowledged and deleted
-- together at the end, grouped by the endpoint record whose reference
-- they give back ('' for none): XDEL says how many of a group it really
-- deleted, which is what the reference counts need.
local complete, groups, order = {}, {}, {}
local function finish_entry(id, group)
  complete[#complete + 1] = id
  if not groups[group] then
    groups[group] = {}
    order[#order + 1] = group
  end
  local members = groups[group]
  members[#members + 1] = id
end

-- Postbacks that stop waiting in the stream beyond one per entry.
local unbatched = 0
local taken, gone = {}, {}
local i = 6
while i <= #ARGV do
  local id, count, address, nops = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2], tonumber(ARGV[i + 3])
  i = i + 4
  local mine = held[id]
  local done, had, newly, whole_letter
  if mine then
    done, had = load_bits(id, count)
    newly, whole_letter = 0, false
  end
  for _ = 1, nops do
    local pos, kind = ARGV[i], ARGV[i + 1]
    local width = 2
    if kind == 'r' then
      width = 4
    elseif kind == 'd' then
      width = 3 + tonumber(ARGV[i + 2])
    end
    if mine then
      local first, last = tonumber(pos), tonumber(pos)
      if pos == '*' then
        first, last = 0, count - 1
      end
      local fresh = false
      for p = first, last do
        if not done[p] then
          done[p] = true
          newly = newly + 1
          fresh = true
        end
      end
      if fresh and kind == 'r' then
        redis.call('ZADD', KEYS[2], due(tonumber(ARGV[i + 2])), ARGV[i + 3])
      elseif fresh and kind == 'd' then
        redis.call('XADD', KEYS[3], '*', unpack(ARGV, i + 3, i + width - 1))
        whole_letter = whole_letter or pos == '*'
      end
    end
    i = i + width
  end
  if not mine then
    local row = redis.pcall('XPENDING', KEYS[1], ARGV[1], id, id, 1)
    if type(row) == 'table' and not row.err and row[1] then
      taken[#taken + 1] = id
    else
      gone[#gone + 1] = id
    end
  elseif had + newly >= count then
    -- A whole entry in the dead-letter stream still refers to its record.
    finish_entry(id, (whole_letter and '') or address)
    if count > 1 then
      redis.call('HDEL', KEYS[7], id)
    end
    unbatched = unbatched + math.max(0, newly - 1)
  elseif newly > 0 then
    store_bits(id, count, done)
    unbatched = unbatched + newly
  end
end

if unbatched > 0 and redis.call('DECRBY', KEYS[6], unbatched) <= 0 then
  redis.call('DEL', KEYS[6])
end
local deleted = 0
if #complete > 0 then
  redis.call('XACK', KEYS[1], ARGV[1], unpack(complete))
  for _, group in ipairs(order) do
    local n = redis.call('XDEL', KEYS[1], unpack(groups[group]))
    deleted = deleted + n
    if n > 0 and group ~= '' then
      local left = redis.call('HINCRBY', KEYS[5], group, -n)
      if left <= 0 then
        redis.call('HDEL', KEYS[5], group)
        if left == 0 then
          redis.call('HDEL', KEYS[4], group)
        end
      end
    end
  end
end
return {deleted, taken, gone}

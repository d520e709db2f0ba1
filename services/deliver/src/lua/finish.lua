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

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function id_less(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, bm = tonumber(am), tonumber(bm)
  return am < bm or (am == bm and tonumber(as) < tonumber(bs))
end

-- Parse the entries.
local entries = {}
local i = 3
while i <= #ARGV do
  local e = {id = ARGV[i], count = tonumber(ARGV[i + 1]), address = ARGV[i + 2], ops = {}}
  local nops = tonumber(ARGV[i + 3])
  i = i + 4
  for _ = 1, nops do
    local op = {pos = ARGV[i], kind = ARGV[i + 1]}
    if op.kind == 'r' then
      op.delay, op.member = tonumber(ARGV[i + 2]), ARGV[i + 3]
      i = i + 4
    elseif op.kind == 'd' then
      local n = tonumber(ARGV[i + 2])
      op.fields = {}
      for k = 1, n do
        op.fields[k] = ARGV[i + 2 + k]
      end
      i = i + 3 + n
    else
      i = i + 2
    end
    e.ops[#e.ops + 1] = op
  end
  entries[#entries + 1] = e
end
if #entries == 0 then
  return {0, {}, {}}
end

-- Which of them this consumer holds: its pending entries between the
-- lowest and the highest id, page by page (usually one page).
local low, high = entries[1].id, entries[1].id
for _, e in ipairs(entries) do
  if id_less(e.id, low) then low = e.id end
  if id_less(high, e.id) then high = e.id end
end
local held = {}
local start = low
local page = 2 * #entries + 64
while true do
  local rows = redis.pcall('XPENDING', KEYS[1], ARGV[1], start, high, page, ARGV[2])
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

local function take_batched(n)
  if n > 0 and redis.call('DECRBY', KEYS[6], n) <= 0 then
    redis.call('DEL', KEYS[6])
  end
end

local function release(address)
  local left = redis.call('HINCRBY', KEYS[5], address, -1)
  if left <= 0 then
    redis.call('HDEL', KEYS[5], address)
    if left == 0 then
      redis.call('HDEL', KEYS[4], address)
    end
  end
end

local deleted, taken, gone = 0, {}, {}
for _, e in ipairs(entries) do
  if not held[e.id] then
    local row = redis.pcall('XPENDING', KEYS[1], ARGV[1], e.id, e.id, 1)
    if type(row) == 'table' and not row.err and row[1] then
      taken[#taken + 1] = e.id
    else
      gone[#gone + 1] = e.id
    end
  else
    local done, had = load_bits(e.id, e.count)
    local newly, whole_letter = 0, false
    for _, op in ipairs(e.ops) do
      local first, last = tonumber(op.pos), tonumber(op.pos)
      if op.pos == '*' then
        first, last = 0, e.count - 1
      end
      local fresh = false
      for p = first, last do
        if not done[p] then
          done[p] = true
          newly = newly + 1
          fresh = true
        end
      end
      if fresh then
        if op.kind == 'r' then
          redis.call('ZADD', KEYS[2], now + op.delay, op.member)
        elseif op.kind == 'd' then
          redis.call('XADD', KEYS[3], '*', unpack(op.fields))
          whole_letter = whole_letter or op.pos == '*'
        end
      end
    end
    if had + newly >= e.count then
      redis.call('XACK', KEYS[1], ARGV[1], e.id)
      local n = redis.call('XDEL', KEYS[1], e.id)
      deleted = deleted + n
      if e.count > 1 then
        redis.call('HDEL', KEYS[7], e.id)
      end
      if n > 0 and e.address ~= '' and not whole_letter then
        release(e.address)
      end
      take_batched(newly - 1)
    elseif newly > 0 then
      store_bits(e.id, e.count, done)
      take_batched(newly)
    end
  end
end
return {deleted, taken, gone}

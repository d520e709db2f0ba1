#!lua flags=allow-oom
-- Finishes postbacks of stream entries that one worker holds. Every way a
-- postback ends (delivered, scheduled again, dead-lettered) goes through
-- this script, which is what makes each happen exactly once:
--
-- * Ownership: only entries pending with this consumer are touched. An
--   entry another worker has claimed, or one no longer pending at all, is
--   left alone and named in the reply; but one still in the stream that
--   no consumer holds (its read lost in a failover) is finished when this
--   call finishes all its postbacks.
-- * Each postback's outcome is recorded in its entry: a position already
--   finished is skipped, so a retried call (a reply lost on the way back)
--   or a worker that claims the entry never finishes a postback twice.
--   Entries of several postbacks keep the finished positions in a hash
--   (KEYS[7]) until their last postback is finished.
-- * An entry leaves the stream (XACK + XDEL) with its last postback, in the
--   same call, and gives back its endpoint record's reference then, unless
--   the entry itself was dead-lettered whole (the letter keeps it). Every
--   level entry and letter written that refers to a record takes one; a
--   record goes with its last reference.
-- * KEYS[6] stays equal to the postbacks waiting in the stream beyond one
--   per entry, KEYS[8] to the postbacks in the schedule's levels.
-- * Memory: everything is worked out first; then what frees memory is
--   done (acknowledgements, deletions, references given back), and only
--   then what takes memory (the schedule, letters, positions). The script
--   runs even when Redis is at maxmemory (allow-oom): deliver's steps turn
--   what is queued into what is scheduled or given up, of about the same
--   size, and ingest keeps the room for that (README, "Sizing Redis").
--
-- Mirrors: postback_common::records::finished (load_bits, store_bits),
-- ::schedule (levels, index, count), ::endpoint (reference counts); the
-- fields of level entries (::stream_entry) and letters (::dead_letter)
-- are built by deliver and appended as given.
--
-- KEYS[1]  the stream
-- KEYS[2]  the schedule's index (sorted set: member '@<ms>' per level,
--          score = when the level's oldest entry is due); a level is the
--          stream KEYS[2] .. ':@<ms>' (same hash tag)
-- KEYS[3]  the dead-letter stream
-- KEYS[4]  the endpoint records (hash: address -> record)
-- KEYS[5]  the endpoint reference counts (hash: address -> references)
-- KEYS[6]  postbacks waiting in the stream beyond one per entry (string)
-- KEYS[7]  finished positions (hash: entry id -> bitmap)
-- KEYS[8]  postbacks in the schedule's levels (string)
-- ARGV[1]  the consumer group
-- ARGV[2]  this worker's consumer name
-- ARGV[3]  the lowest and ARGV[4] the highest of the entries' ids
-- ARGV[5]  the number of entries
-- then for each entry: its id, its number of postbacks, its endpoint record
--          address ('' for none), the number of operations, the operations
-- an operation: its positions (a string, one byte per position from 0;
--          empty: every postback of the entry), then one of
--            'a'                              delivered
--            'r', delay ms, later ms, postbacks, record, 2n, n
--            field/value pairs                scheduled again, as one entry
--                                             of the level of that delay
--                                             holding that many postbacks
--                                             and referring to that record
--                                             ('' for none); with later ms
--                                             > 0 its id is set that far
--                                             ahead of now (so it is due
--                                             that much after the level's
--                                             delay; the stream's last id
--                                             when that is further)
--            'd', record, 2n, n field/value pairs
--                                             dead-lettered; with every
--                                             position the entry goes whole
--                                             and its own reference with it
-- Returns  {entries deleted, ids taken over by another consumer, ids no
--          longer pending at all, ids finished although Redis had forgotten
--          they were read (below)}
--
-- The bitmap: position p is bit (7 - p % 8) of byte p // 8, as SETBIT
-- numbers bits.

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

-- The plan.
local complete, groups, order = {}, {}, {} -- entries to delete, by the record they give back
local complete_bits = {}                     -- those of them with finished positions kept
local partial = {}                           -- {id, count, done} to store
local levels, letters = {}, {}               -- writes: {delay, postbacks, fields} / fields
local refs = {}                              -- record address -> references taken
local ref_order = {}
local unbatched, scheduled = 0, 0
local taken, gone = {}, {}

local function take_ref(address, n)
  if address ~= '' then
    if not refs[address] then
      refs[address] = 0
      ref_order[#ref_order + 1] = address
    end
    refs[address] = refs[address] + n
  end
end

local function finish_entry(id, group)
  complete[#complete + 1] = id
  if not groups[group] then
    groups[group] = {}
    order[#order + 1] = group
  end
  local members = groups[group]
  members[#members + 1] = id
end

-- The width of the operation at ARGV[i].
local function width_at(i)
  local kind = ARGV[i + 1]
  if kind == 'r' then
    return 7 + tonumber(ARGV[i + 6])
  elseif kind == 'd' then
    return 4 + tonumber(ARGV[i + 3])
  end
  return 2
end

-- Entries whose read Redis forgot (a failover to a replica that had not
-- received it): in the stream, pending with no consumer. When this call
-- finishes every postback of one, it is finished as if held: the answers
-- this worker has are recorded instead of being sought again by whoever
-- reads the entry next. One it would leave part finished is left alone
-- (named gone): a read hands it out as new, and a new entry's finished
-- positions are not looked at.
local forgotten = {}
do
  local i = 6
  while i <= #ARGV do
    local id, count, nops = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 3])
    i = i + 4
    local covered, n = {}, 0
    for _ = 1, nops do
      local positions = ARGV[i]
      if positions == '' then
        for p = 0, count - 1 do
          covered[p] = true
        end
      else
        for k = 1, #positions do
          covered[string.byte(positions, k)] = true
        end
      end
      i = i + width_at(i)
    end
    if not held[id] then
      local done = load_bits(id, count)
      for p = 0, count - 1 do
        if covered[p] or done[p] then
          n = n + 1
        end
      end
    end
    if not held[id] and n >= count then
      local row = redis.pcall('XPENDING', KEYS[1], ARGV[1], id, id, 1)
      local pending = type(row) == 'table' and not row.err and row[1]
      if not pending and #redis.call('XRANGE', KEYS[1], id, id) > 0 then
        forgotten[#forgotten + 1] = id
        held[id] = true
      end
    end
  end
end

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
    local positions, kind = ARGV[i], ARGV[i + 1]
    local width, fields_at = width_at(i), 0
    if kind == 'r' then
      fields_at = i + 7
    elseif kind == 'd' then
      fields_at = i + 4
    end
    if mine then
      -- Fresh when at least one of its postbacks was not finished yet: a
      -- write that covers some finished ones (which a worker never
      -- sends) is still made, so that nothing is lost.
      local fresh = false
      local function mark(p)
        if not done[p] then
          done[p] = true
          newly = newly + 1
          fresh = true
        end
      end
      if positions == '' then
        for p = 0, count - 1 do
          mark(p)
        end
      else
        for k = 1, #positions do
          mark(string.byte(positions, k))
        end
      end
      if fresh and kind == 'r' then
        local postbacks = tonumber(ARGV[i + 4])
        levels[#levels + 1] = {ARGV[i + 2], {unpack(ARGV, fields_at, i + width - 1)}, tonumber(ARGV[i + 3])}
        scheduled = scheduled + postbacks
        take_ref(ARGV[i + 5], 1)
      elseif fresh and kind == 'd' then
        letters[#letters + 1] = {unpack(ARGV, fields_at, i + width - 1)}
        if positions == '' then
          whole_letter = true -- the entry's own reference goes with it
        else
          take_ref(ARGV[i + 2], 1)
        end
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
    finish_entry(id, (whole_letter and '') or address)
    if count > 1 then
      complete_bits[#complete_bits + 1] = id
    end
    unbatched = unbatched + math.max(0, newly - 1)
  elseif newly > 0 then
    partial[#partial + 1] = {id, count, done}
    unbatched = unbatched + newly
  end
end

-- What frees memory: the finished entries, their positions, the
-- references they give back.
local deleted = 0
local emptied = false
if #complete > 0 then
  redis.call('XACK', KEYS[1], ARGV[1], unpack(complete))
  for _, group in ipairs(order) do
    local n = redis.call('XDEL', KEYS[1], unpack(groups[group]))
    deleted = deleted + n
    take_ref(group, -n)
  end
  if #complete_bits > 0 then
    redis.call('HDEL', KEYS[7], unpack(complete_bits))
  end
  if redis.call('XLEN', KEYS[1]) == 0 then
    -- Nothing waits, so nothing is counted or partly finished: also heals
    -- what an entry someone deleted by hand left behind.
    redis.call('DEL', KEYS[6], KEYS[7])
    emptied = true
  end
end
for _, address in ipairs(ref_order) do
  local n = refs[address]
  if n ~= 0 then
    local left = redis.call('HINCRBY', KEYS[5], address, n)
    if left <= 0 then
      -- A count below zero (counts changed by hand) is dropped and the
      -- record kept.
      redis.call('HDEL', KEYS[5], address)
      if left == 0 then
        redis.call('HDEL', KEYS[4], address)
      end
    end
  end
end

-- What takes memory: the schedule, the letters, positions of entries
-- still waiting, the counts.
local now
for _, level in ipairs(levels) do
  local member = '@' .. level[1]
  local key = KEYS[2] .. ':' .. member
  local id
  if level[3] > 0 then
    if not now then
      local t = redis.call('TIME')
      now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    end
    id = redis.pcall('XADD', key, (now + level[3]) .. '-*', unpack(level[2]))
    if type(id) ~= 'string' then
      id = nil -- the level's last entry is further ahead: after it
    end
  end
  if not id then
    id = redis.call('XADD', key, '*', unpack(level[2]))
  end
  local ms = tonumber(string.match(id, '^(%d+)'))
  redis.call('ZADD', KEYS[2], 'LT', ms + tonumber(level[1]), member)
end
for _, fields in ipairs(letters) do
  redis.call('XADD', KEYS[3], '*', unpack(fields))
end
if not emptied then
  for _, entry in ipairs(partial) do
    store_bits(entry[1], entry[2], entry[3])
  end
  if unbatched > 0 and redis.call('DECRBY', KEYS[6], unbatched) <= 0 then
    redis.call('DEL', KEYS[6])
  end
end
if scheduled > 0 then
  redis.call('INCRBY', KEYS[8], scheduled)
end
return {deleted, taken, gone, forgotten}

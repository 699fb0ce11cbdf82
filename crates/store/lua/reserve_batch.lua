-- ARGV: events backlog max, n (items), then the n reservation ids and the n user ids, each
-- list in the items' order, then for each item with an idempotency key its number (1..n)
-- and the key.
-- Commits a batch of reservations against the sale's pool, in order, answering each item
-- with one letter:
--   'R'  reserved (created_ms and expires_ms are the batch's, in the header)
--   'P'  the idempotency key was seen: the earlier reservation, no ticket taken
--   'L'  the user already holds per_user_limit tickets
--   'N'  the pool is empty: sold out for every node at this moment
--   'A'  this item's id is already reserved: the same call ran before (a client library
--        re-sent it after a lost reply); nothing taken again
-- Answers {'OK', created_ms, expires_ms, available after the batch, the letters as one
-- string, then for each 'P' and 'A' in order one more element: 'id record' for a 'P' (the
-- earlier reservation), the record for an 'A'}. The node answers later requests `sold_out`
-- from memory while available is 0.
--
-- Written for throughput: Redis runs one script at a time, so its cost per item is the
-- cluster's ceiling (bench/redis-callgrind.sh counts it). Reads are one HMGET per hash for
-- the whole batch, straight from ARGV's slices (the ids and the users are contiguous for
-- that); decisions happen in Lua tables; writes are one command per hash, one deadline entry
-- and one stream entry for all the new reservations; the answer is one string, not one
-- element per item. A call has a fixed cost about ten items' worth, so larger batches are
-- cheaper per reservation.
local n = tonumber(ARGV[2])
-- ARGV[ID0 + j], ARGV[USER0 + j]: item j's id and user.
local ID0, USER0 = 2, 2 + n
local sale = redis.call('HMGET', K_SALE, 'limit', 'hold_ms', 'writer', 'pool', 'leased', 'reserved')
if not sale[1] then
  return {'E', 'SALE_NOT_FOUND'}
end
local now = now_ms()
local pool, leased = tonumber(sale[4]), tonumber(sale[5] or '0')
-- emit() need not ask again whether an order writer follows the sale.
writer_attached = sale[3] ~= false
-- With an order writer, the stream is its queue: refuse new sales rather than let it grow
-- without bound (the node answers 503) while the writer cannot keep up.
if sale[3] and redis.call('XLEN', K_EVENTS) >= tonumber(ARGV[1]) then
  return {'E', 'BACKLOG'}
end
local limit, hold_ms = tonumber(sale[1]), tonumber(sale[2])
local expires = now + hold_ms
local now_s, expires_s = fmt(now), fmt(expires)
if n == 0 then
  return {'OK', now_s, expires_s, fmt(pool + leased), ''}
end

local counts = hmget_chunked(K_USERS, ARGV, USER0 + 1, USER0 + n)
-- Ids already recorded: this call was applied before and is being re-sent. Each such item
-- answers what it got, takes nothing. (Reading every id back costs less than a mark per
-- call would: each command a script runs has a fixed cost of thousands of instructions.)
local stored = hmget_chunked(K_RES, ARGV, ID0 + 1, ID0 + n)
-- keyed[j]: item j's user and key joined as the idem hash's field; seen[that]: its id.
local keyed, seen = {}, {}
local idem_keys = {}
for i = 3 + 2 * n, #ARGV, 2 do
  local j = tonumber(ARGV[i])
  local ik = ARGV[USER0 + j] .. '\n' .. ARGV[i + 1]
  keyed[j] = ik
  idem_keys[#idem_keys + 1] = ik
end
if #idem_keys > 0 then
  local found = hmget_chunked(K_IDEM, idem_keys)
  for j, k in ipairs(idem_keys) do
    if found[j] then seen[k] = found[j] end
  end
end

-- Small counts as text without string.format (which goes through the C library's printf).
local COUNT_TEXT = {'1', '2', '3', '4', '5', '6', '7', '8', '9', '10'}
-- Decide each item in order; collect the writes.
-- held[user]: the user's count after this batch's earlier items, once it took one here.
local held = {}
local letters, extra = {}, {}
-- The writes, with explicit lengths (Lua 5.1's # searches for the end of a table).
local res_args, user_args, idem_args, ids, new_users = {}, {}, {}, {}, {}
local records = nil -- id -> record of this batch's keyed holds (a key replayed later in it)
local taken, idem_n = 0, 0
local record_head = 'reserved ' .. now_s .. ' ' .. expires_s .. ' 0 ' .. now_s .. ' '
for j = 1, n do
  local id, user, ik = ARGV[ID0 + j], ARGV[USER0 + j], keyed[j]
  local h = held[user] or tonumber(counts[j] or '0')
  local prior = ik and seen[ik]
  if stored[j] then
    letters[j] = 'A'
    extra[#extra + 1] = stored[j]
  elseif prior then
    local record = (records and records[prior]) or redis.call('HGET', K_RES, prior)
    letters[j] = 'P'
    extra[#extra + 1] = prior .. ' ' .. record
  elseif h >= limit then
    letters[j] = 'L'
  elseif pool - taken <= 0 then
    letters[j] = 'N'
  else
    taken = taken + 1
    h = h + 1
    held[user] = h
    local record = record_head .. user
    res_args[2 * taken - 1] = id
    res_args[2 * taken] = record
    -- A user twice in the batch is written twice; the later, higher count wins.
    user_args[2 * taken - 1] = user
    user_args[2 * taken] = COUNT_TEXT[h] or fmt(h)
    if ik then
      records = records or {}
      records[id] = record
      seen[ik] = id
      idem_args[idem_n + 1] = ik
      idem_args[idem_n + 2] = id
      idem_n = idem_n + 2
    end
    ids[taken] = id
    new_users[taken] = user
    letters[j] = 'R'
  end
end
local out = {'OK', now_s, expires_s, fmt(pool - taken + leased), table.concat(letters)}
for _, e in ipairs(extra) do
  out[#out + 1] = e
end
if taken == 0 then
  return out
end

-- Write: one command per hash, one deadline entry and one stream entry for every reservation
-- of the batch.
call_chunked('HSET', K_RES, res_args)
for from = 1, taken, DUEB_IDS_MAX do
  redis.call('ZADD', K_DUEB, expires_s,
    table.concat(ids, ' ', from, math.min(from + DUEB_IDS_MAX - 1, taken)))
end
call_chunked('HSET', K_IDEM, idem_args)
call_chunked('HSET', K_USERS, user_args)
-- Both counts in one write: the script runs alone, so the values read above still stand.
redis.call('HSET', K_SALE, 'pool', fmt(pool - taken), 'reserved', fmt(tonumber(sale[6] or '0') + taken))
-- r and u list the ids and users in the same order (neither contains a space).
emit({'t', 'reserved', 'r', table.concat(ids, ' '), 'u', table.concat(new_users, ' '),
  'c', now_s, 'e', expires_s, 'p', '0', 'm', now_s})
return out

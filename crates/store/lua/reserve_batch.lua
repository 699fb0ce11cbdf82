-- ARGV: events backlog max, then per item: reservation id, user id, idempotency key ('' for
-- none).
-- Commits a batch of reservations against the sale's pool, in order, answering each item:
--   'R'              reserved (created_ms and expires_ms are the batch's, in the header)
--   'P id record'    the idempotency key was seen: the earlier reservation, no ticket taken
--   'L'              the user already holds per_user_limit tickets
--   'N'              the pool is empty: sold out for every node at this moment
--   'A record'       this item's id is already reserved: the same call ran before (a client
--                    library re-sent it after a lost reply); nothing taken again
-- Answers {'OK', created_ms, expires_ms, available after the batch, answer per item...}; the
-- node answers later requests `sold_out` from memory while available is 0.
--
-- Written for throughput: Redis runs one script at a time, so its cost per item is the
-- cluster's ceiling. Reads are one HMGET per hash for the whole batch, decisions happen in Lua
-- tables, and writes are one command per hash (and one deadline entry and one stream entry
-- for all the new reservations), so a batch of n costs about ten commands instead of six per
-- item.
local sale = redis.call('HMGET', K_SALE, 'limit', 'hold_ms', 'writer', 'pool', 'leased')
if not sale[1] then
  return {'E', 'SALE_NOT_FOUND'}
end
local now = now_ms()
local pool, leased = tonumber(sale[4]), tonumber(sale[5] or '0')
-- With an order writer, the stream is its queue: refuse new sales rather than let it grow
-- without bound (the node answers 503) while the writer cannot keep up.
if sale[3] and redis.call('XLEN', K_EVENTS) >= tonumber(ARGV[1]) then
  return {'E', 'BACKLOG'}
end
local limit, hold_ms = tonumber(sale[1]), tonumber(sale[2])
local expires = now + hold_ms
local now_s, expires_s = fmt(now), fmt(expires)

-- Read what the batch needs in one command per hash.
local users, idem_keys = {}, {}
for i = 2, #ARGV, 3 do
  users[#users + 1] = ARGV[i + 1]
  if ARGV[i + 2] ~= '' then
    idem_keys[#idem_keys + 1] = ARGV[i + 1] .. '\n' .. ARGV[i + 2]
  end
end
local held = {}
local counts = hmget_chunked(K_USERS, users)
for j, u in ipairs(users) do
  held[u] = tonumber(counts[j] or '0')
end
-- Ids already recorded: this call was applied before and is being re-sent (a cluster client
-- retries a call whose reply was lost). Each such item answers what it got, takes nothing.
local item_ids = {}
for i = 2, #ARGV, 3 do
  item_ids[#item_ids + 1] = ARGV[i]
end
local already = {}
local stored = hmget_chunked(K_RES, item_ids)
for j, id in ipairs(item_ids) do
  if stored[j] then already[id] = stored[j] end
end
local seen = {}
if #idem_keys > 0 then
  local found = hmget_chunked(K_IDEM, idem_keys)
  for j, k in ipairs(idem_keys) do
    if found[j] then seen[k] = found[j] end
  end
end

-- Decide each item in order; collect the writes.
local out = {'OK', now_s, expires_s, ''}
local res_args, idem_args, ids, new_users, records = {}, {}, {}, {}, {}
local taken = 0
for i = 2, #ARGV, 3 do
  local id, user, key = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local ik = (key ~= '') and (user .. '\n' .. key) or nil
  local prior = ik and seen[ik]
  if already[id] then
    out[#out + 1] = 'A ' .. already[id]
  elseif prior then
    local record = records[prior] or redis.call('HGET', K_RES, prior)
    out[#out + 1] = 'P ' .. prior .. ' ' .. record
  elseif held[user] >= limit then
    out[#out + 1] = 'L'
  elseif pool - taken <= 0 then
    out[#out + 1] = 'N'
  else
    taken = taken + 1
    held[user] = held[user] + 1
    local rv = 'reserved ' .. now_s .. ' ' .. expires_s .. ' 0 ' .. now_s .. ' ' .. user
    res_args[#res_args + 1] = id
    res_args[#res_args + 1] = rv
    -- A replay of the same key later in this batch finds the record here.
    records[id] = rv
    if ik then
      seen[ik] = id
      idem_args[#idem_args + 1] = ik
      idem_args[#idem_args + 1] = id
    end
    ids[#ids + 1] = id
    new_users[#new_users + 1] = user
    out[#out + 1] = 'R'
  end
end
out[4] = fmt(pool - taken + leased)
if taken == 0 then
  return out
end

-- Write: one command per hash, one deadline entry and one stream entry for every reservation
-- of the batch.
call_chunked('HSET', K_RES, res_args)
for from = 1, #ids, DUEB_IDS_MAX do
  redis.call('ZADD', K_DUEB, expires_s,
    table.concat(ids, ' ', from, math.min(from + DUEB_IDS_MAX - 1, #ids)))
end
call_chunked('HSET', K_IDEM, idem_args)
local user_args, written = {}, {}
for _, u in ipairs(new_users) do
  if not written[u] then
    written[u] = true
    user_args[#user_args + 1] = u
    user_args[#user_args + 1] = fmt(held[u])
  end
end
call_chunked('HSET', K_USERS, user_args)
redis.call('HINCRBY', K_SALE, 'pool', fmt(-taken))
redis.call('HINCRBY', K_SALE, 'reserved', fmt(taken))
-- r and u list the ids and users in the same order (neither contains a space).
emit({'t', 'reserved', 'r', table.concat(ids, ' '), 'u', table.concat(new_users, ' '),
  'c', now_s, 'e', expires_s, 'p', '0', 'm', now_s})
return out

-- ARGV: lease id, events backlog max, then per item: reservation id, user id, idempotency
-- key ('' for none).
-- Commits a batch of reservations against one lease, in order, answering each item:
--   'R'              reserved (created_ms and expires_ms are the batch's, in the header)
--   'P id record'    the idempotency key was seen: the earlier reservation, no ticket taken
--   'L'              the user already holds per_user_limit tickets
--   'N'              the lease has no ticket left
-- The lease is the fence: a lease taken back (or past its deadline) refuses the whole batch.
-- Answers {'OK', created_ms, expires_ms, answer per item...}.
local sale = redis.call('HMGET', K_SALE, 'limit', 'hold_ms', 'writer')
if not sale[1] then
  return {'E', 'SALE_NOT_FOUND'}
end
local lease = ARGV[1]
local v = redis.call('HGET', K_LEASES, lease)
if not v then
  return {'E', 'LEASE_LOST'}
end
local now = now_ms()
local rem, dl, node = parse_lease(v)
if dl <= now then
  return {'E', 'LEASE_LOST'}
end
-- With an order writer, the stream is its queue: refuse new sales rather than let it grow
-- without bound (the node answers 503) while the writer cannot keep up.
if sale[3] and redis.call('XLEN', K_EVENTS) >= tonumber(ARGV[2]) then
  return {'E', 'BACKLOG'}
end
local limit, hold_ms = tonumber(sale[1]), tonumber(sale[2])
local expires = now + hold_ms
local out = {'OK', fmt(now), fmt(expires)}
local taken = 0
for i = 3, #ARGV, 3 do
  local id, user, key = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local prior = false
  if key ~= '' then
    prior = redis.call('HGET', K_IDEM, user .. '\n' .. key)
  end
  if prior then
    out[#out + 1] = 'P ' .. prior .. ' ' .. redis.call('HGET', K_RES, prior)
  elseif tonumber(redis.call('HGET', K_USERS, user) or '0') >= limit then
    out[#out + 1] = 'L'
  elseif rem - taken <= 0 then
    out[#out + 1] = 'N'
  else
    taken = taken + 1
    local rv = res_value('reserved', now, expires, 0, now, user)
    redis.call('HSET', K_RES, id, rv)
    redis.call('HINCRBY', K_USERS, user, 1)
    if key ~= '' then
      redis.call('HSET', K_IDEM, user .. '\n' .. key, id)
    end
    redis.call('ZADD', K_DUE, fmt(expires), id)
    emit_reservation(id, rv)
    out[#out + 1] = 'R'
  end
end
if taken > 0 then
  redis.call('HSET', K_LEASES, lease, lease_value(rem - taken, dl, node))
  redis.call('HINCRBY', K_SALE, 'leased', fmt(-taken))
  redis.call('HINCRBY', K_SALE, 'reserved', fmt(taken))
end
return out

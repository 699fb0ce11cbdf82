-- ARGV: most holds to expire
-- Expires due holds of this sale (earliest first) and takes back its lapsed first-version
-- leases.
-- Idempotent and safe on every node at once: a single hold leaves `due` when it settles; a
-- batch's member of `dueb` leaves at its deadline, its settled holds skipped.
-- Answers {'OK', expired, leases reclaimed, next_ms}: next_ms is when this sale next needs a
-- pass, the earliest remaining deadline, but no later than now + hold_ms (a hold made from now
-- on is due no sooner), and soon while first-version leases remain.
if redis.call('EXISTS', K_SALE) == 0 then
  return {'OK', '0', '0', '0'}
end
local now = now_ms()
local max = tonumber(ARGV[1])
local expired = 0
-- Expires hold `id` if it is still reserved (it leaves `due` then); answers whether it did.
local function expire_held(id)
  local v = redis.call('HGET', K_RES, id)
  if v and string.sub(v, 1, 9) == 'reserved ' then
    release_hold(id, v, 'expired', now)
    expired = expired + 1
    return true
  end
  return false
end
-- Single holds: each member is one hold, and leaves when it settles.
local due = redis.call('ZRANGEBYSCORE', K_DUE, '-inf', now, 'LIMIT', 0, max)
for _, id in ipairs(due) do
  if not expire_held(id) then
    redis.call('ZREM', K_DUE, id)
  end
end
-- Batches: every hold of a member is due; those still reserved expire, then the member goes.
-- A member is taken whole (at most DUEB_IDS_MAX holds), so a pass may exceed max by that.
if expired < max then
  local batches = redis.call('ZRANGEBYSCORE', K_DUEB, '-inf', now, 'LIMIT', 0, max - expired)
  for _, member in ipairs(batches) do
    if expired >= max then
      break
    end
    for id in string.gmatch(member, '%S+') do
      expire_held(id)
    end
    redis.call('ZREM', K_DUEB, member)
  end
end
local reclaimed = reclaim_lapsed(now)
if expired + reclaimed > 0 then
  offer_freed(now)
end
local next_ms = now + tonumber(redis.call('HGET', K_SALE, 'hold_ms'))
for _, k in ipairs({K_DUE, K_DUEB}) do
  local first = redis.call('ZRANGE', k, 0, 0, 'WITHSCORES')
  if first[2] then
    next_ms = math.min(next_ms, tonumber(first[2]))
  end
end
if redis.call('HLEN', K_LEASES) > 0 then
  next_ms = math.min(next_ms, now + 1000)
end
return {'OK', fmt(expired), fmt(reclaimed), fmt(next_ms)}

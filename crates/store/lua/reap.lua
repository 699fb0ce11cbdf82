-- ARGV: most holds to expire
-- Expires due holds of this sale (earliest first) and takes back its lapsed first-version
-- leases.
-- Idempotent and safe on every node at once: a hold leaves the due index when it settles.
-- Answers {'OK', expired, leases reclaimed}.
if redis.call('EXISTS', K_SALE) == 0 then
  return {'OK', '0', '0'}
end
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', K_DUE, '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local expired = 0
for _, id in ipairs(due) do
  local v = redis.call('HGET', K_RES, id)
  if v and string.sub(v, 1, 9) == 'reserved ' then
    release_hold(id, v, 'expired', now)
    expired = expired + 1
  else
    redis.call('ZREM', K_DUE, id)
  end
end
return {'OK', fmt(expired), fmt(reclaim_lapsed(now))}

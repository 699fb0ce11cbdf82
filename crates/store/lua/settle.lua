-- ARGV: reservation id, user id, action ('pay' or 'cancel')
-- Pays or cancels a reservation. Repeating the same action changes nothing. A hold whose
-- deadline has passed is expired here (recorded) even if no reaper has reached it yet.
-- Answers {'OK', record} or {'E', code}.
local id, user, action = ARGV[1], ARGV[2], ARGV[3]
local v = redis.call('HGET', K_RES, id)
if not v then
  return {'E', 'RESERVATION_NOT_FOUND'}
end
local st, c, e, p, m, u = parse_res(v)
if u ~= user then
  return {'E', 'FORBIDDEN'}
end
if st == 'expired' then
  return {'E', 'EXPIRED'}
end
if action == 'pay' then
  if st == 'paid' then return {'OK', v} end
  if st == 'cancelled' then return {'E', 'CANCELLED'} end
else
  if st == 'cancelled' then return {'OK', v} end
  if st == 'paid' then return {'E', 'ALREADY_PAID'} end
end
local now = now_ms()
if e <= now then
  release_hold(id, v, 'expired', now)
  offer_freed(now)
  return {'E', 'EXPIRED'}
end
if action == 'cancel' then
  local nv = release_hold(id, v, 'cancelled', now)
  offer_freed(now)
  return {'OK', nv}
end
local nv = res_value('paid', c, e, now, now, u)
redis.call('HSET', K_RES, id, nv)
redis.call('ZREM', K_DUE, id)
redis.call('HINCRBY', K_SALE, 'reserved', -1)
redis.call('HINCRBY', K_SALE, 'paid', 1)
emit_reservation(id, nv)
return {'OK', nv}

-- ARGV: action ('join', 'get' or 'withdraw'), waitlist id, user id, most entries
-- join: puts a user on a sold-out sale's waitlist, or answers the user's entry still waiting.
-- get: an entry. withdraw: the user leaves the line (an offered entry keeps its reservation).
-- Answers {'OK'} (get: none) or {'OK', waitlist id, user, state, position ('' unless
-- waiting), created '1'/'0'}.
local action, wid, user = ARGV[1], ARGV[2], ARGV[3]
if redis.call('EXISTS', K_SALE) == 0 then
  return {'E', 'SALE_NOT_FOUND'}
end

local function answer(id, created)
  local v = redis.call('HGET', K_WL, 'w:' .. id)
  if not v then
    return nil
  end
  local st, seq, u = parse_wl(v)
  local pos = (st == 'waiting') and fmt(wl_position(seq)) or ''
  return {'OK', id, u, st, pos, created}
end

if action == 'get' then
  return answer(wid, '0') or {'OK'}
end
if action == 'withdraw' then
  local v = redis.call('HGET', K_WL, 'w:' .. wid)
  if not v then
    return {'E', 'WAITLIST_NOT_FOUND'}
  end
  local st, seq, u = parse_wl(v)
  if u ~= user then
    return {'E', 'FORBIDDEN'}
  end
  if st == 'waiting' then
    redis.call('HSET', K_WL, 'w:' .. wid, 'withdrawn ' .. fmt(seq) .. ' ' .. u)
    redis.call('ZREM', K_WLQ, wid)
  end
  return answer(wid, '0')
end

local existing = redis.call('HGET', K_WL, 'u:' .. user)
if existing then
  local a = answer(existing, '0')
  if a and a[4] == 'waiting' then
    return a
  end
end
local s = redis.call('HMGET', K_SALE, 'pool', 'leased', 'limit', 'wlseq')
if tonumber(s[1]) + tonumber(s[2]) > 0 then
  return {'E', 'NOT_SOLD_OUT'}
end
if tonumber(redis.call('HGET', K_USERS, user) or '0') >= tonumber(s[3]) then
  return {'E', 'LIMIT_REACHED'}
end
if tonumber(s[4] or '0') >= tonumber(ARGV[4]) then
  return {'E', 'LINE_FULL'}
end
local seq = redis.call('HINCRBY', K_SALE, 'wlseq', 1)
redis.call('HSET', K_WL, 'w:' .. wid, 'waiting ' .. fmt(seq) .. ' ' .. user, 'u:' .. user, wid)
redis.call('ZADD', K_WLQ, seq, wid)
return answer(wid, '1')

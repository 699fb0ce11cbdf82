-- ARGV: queue id (new), user id, admission window ms, most entries
-- Puts a user in the sale's waiting-room queue, or answers the user's entry while it still
-- counts (not admitted yet, or admitted less than the window ago).
-- Answers {'OK', queue id, rank ('' before the draw), size, now_ms, created '1'/'0'}.
local qid, user, window, max = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local sale = redis.call('HMGET', K_SALE, 'admit', 'opens_ms')
if redis.call('EXISTS', K_SALE) == 0 then
  return {'E', 'SALE_NOT_FOUND'}
end
if not sale[1] then
  return {'E', 'NO_QUEUE'}
end
local rate, opens = tonumber(sale[1]), tonumber(sale[2])
local now = now_ms()
local existing = redis.call('HGET', K_QUEUE, 'u:' .. user)
if existing then
  local found, _, rank = queue_rank(existing, now, opens)
  if found and not (rank and admitted_at(opens, rate, rank) + window <= now) then
    return {'OK', existing, rank and fmt(rank) or '', fmt(queue_size()), fmt(now), '0'}
  end
end
if queue_size() >= max then
  return {'E', 'LINE_FULL'}
end
-- Once a later arrival exists the pre-queue is closed, even if the clock stepped back across
-- the opening: the line's order never changes again.
if now < opens and not redis.call('HGET', K_SALE, 'qlast') then
  redis.call('HSET', K_QUEUE, 'q:' .. qid, user .. ' P')
  redis.call('ZADD', K_QPRE, 0, qid)
else
  -- Behind the last place given, but never at a place whose time has passed: after the line
  -- drained, a newcomer is admitted at once and unused admissions do not add up to a burst.
  local last = math.max(tonumber(redis.call('HGET', K_SALE, 'qlast') or '0'),
    redis.call('ZCARD', K_QPRE))
  local rank = math.max(last + 1, admitted_through(opens, rate, now))
  redis.call('HSET', K_SALE, 'qlast', fmt(rank))
  redis.call('HINCRBY', K_SALE, 'qlater', 1)
  redis.call('HSET', K_QUEUE, 'q:' .. qid, user .. ' ' .. fmt(rank))
end
redis.call('HSET', K_QUEUE, 'u:' .. user, qid)
local _, _, rank = queue_rank(qid, now, opens)
return {'OK', qid, rank and fmt(rank) or '', fmt(queue_size()), fmt(now), '1'}

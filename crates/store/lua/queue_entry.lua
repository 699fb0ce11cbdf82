-- ARGV: queue id
-- A queue entry. Answers {'OK'} (none) or {'OK', user, rank ('' before the draw), size, now_ms}.
local opens = redis.call('HGET', K_SALE, 'opens_ms')
if not opens then
  return {'OK'}
end
local now = now_ms()
local found, user, rank = queue_rank(ARGV[1], now, tonumber(opens))
if not found then
  return {'OK'}
end
return {'OK', user, rank and fmt(rank) or '', fmt(queue_size()), fmt(now)}

-- ARGV: spec_json, total, per_user_limit, hold_ms, order writers' group ('' for none),
-- opens_ms, admit_per_second ('' without a queue)
if redis.call('EXISTS', K_SALE) == 1 then
  return {'E', 'SALE_EXISTS'}
end
local now = now_ms()
redis.call('HSET', K_SALE, 'spec', ARGV[1], 'total', ARGV[2], 'limit', ARGV[3],
  'hold_ms', ARGV[4], 'pool', ARGV[2], 'leased', 0, 'reserved', 0, 'paid', 0,
  'opens_ms', ARGV[6])
if ARGV[7] ~= '' then
  redis.call('HSET', K_SALE, 'admit', ARGV[7])
end
if ARGV[5] ~= '' then
  -- Order writers follow this cluster: keep every event for them from the first one.
  redis.call('HSET', K_SALE, 'writer', '1')
  redis.call('XGROUP', 'CREATE', K_EVENTS, ARGV[5], '0', 'MKSTREAM')
end
emit({'t', 'sale_created', 'k', ARGV[2], 'at', fmt(now)})
return {'OK', fmt(now)}

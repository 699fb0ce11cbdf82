-- ARGV: user id, idempotency key
-- Finds the reservation an idempotency key made. Answers {'OK'} or {'OK', id, record}.
local id = redis.call('HGET', K_IDEM, ARGV[1] .. '\n' .. ARGV[2])
if not id then
  return {'OK'}
end
return {'OK', id, redis.call('HGET', K_RES, id)}

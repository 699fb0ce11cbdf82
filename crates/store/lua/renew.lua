-- ARGV: lease id, lease_ms
-- Extends a live lease. A lease past its deadline is lost even if nobody reclaimed it yet:
-- its node may have been paused, and another may already count on those tickets.
if redis.call('EXISTS', K_SALE) == 0 then
  return {'E', 'SALE_NOT_FOUND'}
end
local now = now_ms()
local rem, dl, node = live_lease(ARGV[1], now)
if not rem then
  return {'E', 'LEASE_LOST'}
end
local deadline = now + tonumber(ARGV[2])
redis.call('HSET', K_LEASES, ARGV[1], lease_value(rem, deadline, node))
emit({'t', 'lease_renewed', 'l', ARGV[1], 'd', fmt(deadline)})
return {'OK', fmt(deadline)}

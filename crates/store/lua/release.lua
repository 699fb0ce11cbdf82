-- ARGV: lease id, tickets, close ('1' or '0')
-- Gives unsold tickets of a lease back to the pool (at most what it holds); close ends the
-- lease. Answers {'OK', returned}.
if redis.call('EXISTS', K_SALE) == 0 then
  return {'E', 'SALE_NOT_FOUND'}
end
local v = redis.call('HGET', K_LEASES, ARGV[1])
if not v then
  return {'E', 'LEASE_LOST'}
end
local rem, dl, node = parse_lease(v)
if ARGV[3] == '1' then
  close_lease(ARGV[1], rem)
  return {'OK', fmt(rem)}
end
local n = math.min(tonumber(ARGV[2]), rem)
if n <= 0 then
  return {'OK', '0'}
end
redis.call('HSET', K_LEASES, ARGV[1], lease_value(rem - n, dl, node))
redis.call('HINCRBY', K_SALE, 'pool', fmt(n))
redis.call('HINCRBY', K_SALE, 'leased', fmt(-n))
emit({'t', 'lease_returned', 'l', ARGV[1], 'k', fmt(n), 'closed', '0'})
return {'OK', fmt(n)}

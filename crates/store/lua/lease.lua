-- ARGV: node, held lease id (0: none), tickets wanted, lease_ms
-- Leases up to `want` tickets to `node`, extending `held` if it is still this node's live
-- lease. Lapsed leases of any node, and any other lease of this node id (an earlier process
-- of the same name), are closed into the pool first, so a dead node's share is on sale again
-- at the next lease call of any node, not only at the next reaper pass.
-- Answers {'OK', lease, granted, deadline}; lease is 0 when nothing was granted and no lease
-- is held.
if redis.call('EXISTS', K_SALE) == 0 then
  return {'E', 'SALE_NOT_FOUND'}
end
local node, held, want, lease_ms = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
local all = redis.call('HGETALL', K_LEASES)
local held_rem = nil
for i = 1, #all, 2 do
  local rem, dl, owner = parse_lease(all[i + 1])
  if all[i] == held and owner == node and dl > now then
    held_rem = rem
  elseif dl <= now or owner == node then
    close_lease(all[i], rem)
  end
end
local pool = tonumber(redis.call('HGET', K_SALE, 'pool'))
local granted = math.min(want, pool)
if granted <= 0 then
  if held_rem == nil then held = '0' end
  return {'OK', held, '0', fmt(now)}
end
local id = held
if held_rem == nil then
  id = fmt(redis.call('HINCRBY', K_SALE, 'next_lease', 1) - 1)
  held_rem = 0
end
local deadline = now + lease_ms
redis.call('HSET', K_LEASES, id, lease_value(held_rem + granted, deadline, node))
redis.call('HINCRBY', K_SALE, 'pool', fmt(-granted))
redis.call('HINCRBY', K_SALE, 'leased', fmt(granted))
emit({'t', 'lease_granted', 'l', id, 'n', node, 'k', fmt(granted), 'd', fmt(deadline)})
return {'OK', id, fmt(granted), fmt(deadline)}

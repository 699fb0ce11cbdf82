-- Shared by every ticketrush script but `reserve_batch.lua` (prepended in Rust after
-- `prelude.lua`): reservation and lease records as text, releasing a hold, offering freed
-- tickets to the waitlist, and the waiting room's arithmetic.

local function parse_lease(v)
  local rem, dl, node = string.match(v, '^(%d+) (%-?%d+) (.+)$')
  return tonumber(rem), tonumber(dl), node
end

local function parse_res(v)
  local st, c, e, p, m, u = string.match(v, '^(%a+) (%d+) (%d+) (%d+) (%d+) (.+)$')
  return st, tonumber(c), tonumber(e), tonumber(p), tonumber(m), u
end

local function res_value(st, c, e, p, m, u)
  return st .. ' ' .. fmt(c) .. ' ' .. fmt(e) .. ' ' .. fmt(p) .. ' ' .. fmt(m) .. ' ' .. u
end

-- The event of a reservation's change carries the whole record, so the order writer can
-- upsert a row from any one event, in whatever order they reach it.
local function emit_reservation(id, v)
  local st, c, e, p, m, u = parse_res(v)
  emit({'t', st, 'r', id, 'u', u, 'c', fmt(c), 'e', fmt(e), 'p', fmt(p), 'm', fmt(m)})
end

-- Closes a first-version lease: its unsold tickets go back to the pool.
local function close_lease(id, rem)
  redis.call('HDEL', K_LEASES, id)
  redis.call('HINCRBY', K_SALE, 'pool', fmt(rem))
  redis.call('HINCRBY', K_SALE, 'leased', fmt(-rem))
  emit({'t', 'lease_returned', 'l', id, 'k', fmt(rem), 'closed', '1'})
end

-- Takes back every first-version lease past its deadline; returns how many.
local function reclaim_lapsed(now)
  local all = redis.call('HGETALL', K_LEASES)
  local n = 0
  for i = 1, #all, 2 do
    local rem, dl = parse_lease(all[i + 1])
    if dl <= now then
      close_lease(all[i], rem)
      n = n + 1
    end
  end
  return n
end

-- A held ticket goes back to the pool (cancelled or expired).
local function release_hold(id, v, state, now)
  local st, c, e, p, m, u = parse_res(v)
  local nv = res_value(state, c, e, p, now, u)
  redis.call('HSET', K_RES, id, nv)
  redis.call('ZREM', K_DUE, id)
  redis.call('HINCRBY', K_SALE, 'reserved', -1)
  redis.call('HINCRBY', K_SALE, 'pool', 1)
  if redis.call('HINCRBY', K_USERS, u, -1) <= 0 then
    redis.call('HDEL', K_USERS, u)
  end
  emit_reservation(id, nv)
  return nv
end


-- A waitlist entry's record.
local function parse_wl(v)
  local st, seq, u = string.match(v, '^(%a+) (%d+) (.+)$')
  return st, tonumber(seq), u
end

-- Freed tickets in the pool go to the waitlist, first waiting entry first, each as a hold in
-- that buyer's name (reservation id WAITLIST_ID.SALE_ID); a buyer already at the limit is
-- taken out of line instead. Called in the same script as every release, so a freed ticket
-- never sits in the pool while someone waits.
local function offer_freed(now)
  local limit, hold = nil, nil
  while tonumber(redis.call('HGET', K_SALE, 'pool')) > 0 do
    local head = redis.call('ZRANGE', K_WLQ, 0, 0)
    if not head[1] then
      return
    end
    local wid = head[1]
    local _, seq, u = parse_wl(redis.call('HGET', K_WL, 'w:' .. wid))
    redis.call('ZREM', K_WLQ, wid)
    if not limit then
      limit = tonumber(redis.call('HGET', K_SALE, 'limit'))
      hold = tonumber(redis.call('HGET', K_SALE, 'hold_ms'))
    end
    local held = tonumber(redis.call('HGET', K_USERS, u) or '0')
    if held >= limit then
      redis.call('HSET', K_WL, 'w:' .. wid, 'withdrawn ' .. fmt(seq) .. ' ' .. u)
    else
      redis.call('HSET', K_WL, 'w:' .. wid, 'offered ' .. fmt(seq) .. ' ' .. u)
      local sale_id = string.match(K_SALE, '^{sale:(.*)}:sale$')
      local rid = wid .. '.' .. sale_id
      local rv = res_value('reserved', now, now + hold, 0, now, u)
      redis.call('HSET', K_RES, rid, rv)
      redis.call('ZADD', K_DUE, fmt(now + hold), rid)
      redis.call('HINCRBY', K_SALE, 'pool', -1)
      redis.call('HINCRBY', K_SALE, 'reserved', 1)
      redis.call('HINCRBY', K_USERS, u, 1)
      emit_reservation(rid, rv)
    end
  end
end

-- The waiting entries at or ahead of place seq.
local function wl_position(seq)
  return redis.call('ZCOUNT', K_WLQ, '-inf', fmt(seq))
end

-- When place rank of the queue is admitted (QueueSpec::admitted_at).
local function admitted_at(opens, rate, rank)
  return opens + math.ceil((rank - 1) * 1000 / rate)
end

-- The ranks admitted by now (QueueSpec::admitted_through).
local function admitted_through(opens, rate, now)
  if now < opens then
    return 0
  end
  return math.floor((now - opens) * rate / 1000) + 1
end

-- A queue entry: found, its user, its place (nil in the pre-queue before the opening).
local function queue_rank(id, now, opens)
  local v = redis.call('HGET', K_QUEUE, 'q:' .. id)
  if not v then
    return false
  end
  local u, seq = string.match(v, '^(%S+) (%S+)$')
  if seq == 'P' then
    if now < opens then
      return true, u, nil
    end
    return true, u, redis.call('ZRANK', K_QPRE, id) + 1
  end
  return true, u, tonumber(seq)
end

local function queue_size()
  return redis.call('ZCARD', K_QPRE) + tonumber(redis.call('HGET', K_SALE, 'qlater') or '0')
end

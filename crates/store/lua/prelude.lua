-- Shared by every ticketrush script (prepended in Rust before the script's own body).
--
-- KEYS, always in this order, all under the sale's hash tag {sale:ID} so one sale lives in
-- one Redis Cluster slot:
--   1 sale      hash: spec (JSON), total, limit, hold_ms, pool, leased, reserved, paid,
--               writer (set once an order writer reads the events)
--   2 leases    hash: lease id -> "remaining deadline_ms node"; only the first version wrote
--               it (its nodes leased chunks of the pool); `reap` takes them back once lapsed
--   3 users     hash: user id -> tickets held (reserved or paid); absent at zero
--   4 idem      hash: user id .. "\n" .. idempotency key -> reservation id
--   5 res       hash: reservation id -> "state created_ms expires_ms paid_ms updated_ms user"
--   6 due       zset: reservation id scored by expires_ms, for single holds still reserved
--               (waitlist offers; every hold of versions before `dueb`)
--   7 events    stream: one entry per state change, for the order writer
--   8 queue     hash: 'q:' .. queue id -> "user rank" (a later arrival's rank, given at its
--               join, or 'P' in the pre-queue); 'u:' .. user -> the user's latest queue id
--   9 qpre      zset: the pre-queue, every member scored 0, so it sorts by queue id (random:
--               the shuffle at the opening); frozen once the sale opens
--  10 wl        hash: 'w:' .. waitlist id -> "state seq user"; 'u:' .. user -> latest entry
--  11 wlq       zset: waiting entries scored by seq (arrival order)
--  12 dueb      zset: the holds of one `reserve_batch` call (they share a deadline), at most
--               DUEB_IDS_MAX ids joined by spaces per member, scored by their expires_ms: one
--               entry per batch instead of one per hold. Not kept exact: a member stays until
--               its deadline even when some of its holds were paid or cancelled; `reap` skips
--               those. A separate key, so a node of an earlier version (which reads `due` as
--               one id per member) never meets a batch.
--
-- The sale hash also keeps opens_ms and admit (admit_per_second; absent without a queue),
-- qlater (later arrivals so far), qlast (the last rank given to one) and wlseq (waitlist
-- entries so far).
--
-- Every script answers a table whose first element is 'OK' or 'E' (then an error code), so
-- refusals by the rules are data, not Redis errors. Numbers travel as decimal strings.
-- Writes are never rolled back in Redis, so a script checks everything before it writes.

local K_SALE, K_LEASES, K_USERS, K_IDEM, K_RES, K_DUE, K_EVENTS =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local K_QUEUE, K_QPRE, K_WL, K_WLQ, K_DUEB = KEYS[8], KEYS[9], KEYS[10], KEYS[11], KEYS[12]

-- Most hold ids in one `dueb` member (about 7 KB), so one member's expiry stays a bounded step.
local DUEB_IDS_MAX = 256

-- Without an order writer nobody reads the stream: keep only recent history.
local EVENTS_KEEP_WITHOUT_WRITER = 100000

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function fmt(n)
  return string.format('%d', n)
end

-- Whether an order writer follows this sale, looked up once per script call.
local writer_attached = nil

local function emit(fields)
  if writer_attached == nil then
    writer_attached = redis.call('HEXISTS', K_SALE, 'writer') == 1
  end
  if writer_attached then
    redis.call('XADD', K_EVENTS, '*', unpack(fields))
  else
    redis.call('XADD', K_EVENTS, 'MAXLEN', '~', EVENTS_KEEP_WITHOUT_WRITER, '*', unpack(fields))
  end
end

-- Lua in Redis cannot unpack() more than about 8,000 values, and a batch may hold 4,096
-- items: multi-value commands go in slices of at most this many arguments (an even number,
-- so field/value and score/member pairs stay whole).
local UNPACK_MAX = 1000

local function slice(args, from)
  return unpack(args, from, math.min(from + UNPACK_MAX - 1, #args))
end

-- Runs `cmd key args...` in slices; nothing when args is empty.
local function call_chunked(cmd, key, args)
  for from = 1, #args, UNPACK_MAX do
    redis.call(cmd, key, slice(args, from))
  end
end

-- HMGET in slices; answers the values in the order of `fields`.
local function hmget_chunked(key, fields)
  local out = {}
  for from = 1, #fields, UNPACK_MAX do
    local part = redis.call('HMGET', key, slice(fields, from))
    for _, value in ipairs(part) do
      out[#out + 1] = value
    end
  end
  return out
end

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

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
--   6 due       zset: reservation id scored by expires_ms, for holds still reserved
--   7 events    stream: one entry per state change, for the order writer
--
-- Every script answers a table whose first element is 'OK' or 'E' (then an error code), so
-- refusals by the rules are data, not Redis errors. Numbers travel as decimal strings.
-- Writes are never rolled back in Redis, so a script checks everything before it writes.

local K_SALE, K_LEASES, K_USERS, K_IDEM, K_RES, K_DUE, K_EVENTS =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]

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


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
-- `holds.lua` (records, leases, releases, the waitlist and the queue) follows this in every
-- script but `reserve_batch.lua`, which needs none of it: defining its functions is part of
-- every call's cost.
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

-- args[from], ... up to UNPACK_MAX of them, none past args[last].
local function slice(args, from, last)
  return unpack(args, from, math.min(from + UNPACK_MAX - 1, last))
end

-- Runs `cmd key args...` in slices; nothing when args is empty.
local function call_chunked(cmd, key, args)
  for from = 1, #args, UNPACK_MAX do
    redis.call(cmd, key, slice(args, from, #args))
  end
end

-- HMGET of the fields list[first..last] (the whole list by default; ARGV works too), in
-- slices; answers the values in the fields' order, {} for no fields.
local function hmget_chunked(key, list, first, last)
  first, last = first or 1, last or #list
  if last - first < UNPACK_MAX then
    if last < first then
      return {}
    end
    return redis.call('HMGET', key, unpack(list, first, last))
  end
  local out = {}
  for from = first, last, UNPACK_MAX do
    for _, value in ipairs(redis.call('HMGET', key, slice(list, from, last))) do
      out[#out + 1] = value
    end
  end
  return out
end

-- KEYS[1]: a sale's event stream.
-- Trims the entries every consumer group has acknowledged (so a writer that dies with entries
-- pending still finds them), and measures what waits: entries pending or not yet delivered,
-- and the time of the oldest of them. Atomic, so no entry is delivered between the look at a
-- group and the trim. A stream without a group is left alone (its appends trim it by length).
-- Answers {waiting entries, oldest waiting ms (0: none), now ms, trimmed entries, groups}.
local key = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function fmt(n) return string.format('%d', n) end
local function parts(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function less(a, b)
  local am, as = parts(a)
  local bm, bs = parts(b)
  return am < bm or (am == bm and as < bs)
end
if redis.call('EXISTS', key) == 0 then
  return {'0', '0', fmt(now), '0', '0'}
end
local floor, oldest, waiting = nil, nil, 0
local groups = redis.call('XINFO', 'GROUPS', key)
for _, g in ipairs(groups) do
  local info = {}
  for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
  local keep = nil
  local pending = redis.call('XPENDING', key, info['name'])
  if pending[1] > 0 then
    keep = pending[2]
    waiting = waiting + pending[1]
  end
  local nxt = redis.call('XRANGE', key, '(' .. info['last-delivered-id'], '+', 'COUNT', 1)
  if #nxt > 0 then
    waiting = waiting + (tonumber(info['lag']) or 1)
    if keep == nil then keep = nxt[1][1] end
  end
  if keep ~= nil and (oldest == nil or less(keep, oldest)) then oldest = keep end
  if keep == nil then keep = info['last-delivered-id'] end
  if floor == nil or less(keep, floor) then floor = keep end
end
local trimmed = 0
if floor ~= nil then
  trimmed = redis.call('XTRIM', key, 'MINID', floor)
end
local oldest_ms = 0
if oldest ~= nil then oldest_ms = parts(oldest) end
return {fmt(waiting), fmt(oldest_ms), fmt(now), fmt(trimmed), fmt(#groups)}

-- wrk script: every request reserves one ticket for a new user id, as a million distinct
-- buyers would. Usage: wrk -s bench/reserve.lua URL -- SALE_ID
-- The same requests go to the ceiling server, so both sides parse the same bytes.
local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  sale = args[1] or "bench"
  path = "/api/v1/sales/" .. sale .. "/reservations"
  headers = { ["Content-Type"] = "application/json" }
  n = 0
end

function request()
  n = n + 1
  return wrk.format("POST", path, headers, '{"user_id":"u' .. tid .. '-' .. n .. '"}')
end

-- KEYS[1]: a sale's hash; KEYS[2]: its event stream. ARGV[1]: the consumer group.
-- Marks the sale as having an order writer (its appends stop trimming the stream by length:
-- from now on only acknowledged entries are trimmed) and creates the group, reading from the
-- start of the stream. Answers 1, or 0 when the sale does not exist (yet).
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'writer', '1')
-- BUSYGROUP (the group exists) is the normal case after the first writer: ignored.
redis.pcall('XGROUP', 'CREATE', KEYS[2], ARGV[1], '0', 'MKSTREAM')
return 1

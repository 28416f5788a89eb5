-- Sluice budget seeding: rebuild a budget's counters from the ledger when Redis does not
-- have them (its seeded mark is missing: never seeded, or Redis was wiped).
--
-- KEYS[1] lease zset, KEYS[2] amounts hash ('_reserved'), KEYS[3] spent string,
-- KEYS[4] seeded mark (no expiry: its absence means Redis lost the counters).
-- ARGV[1] spent in the current period (USD), ARGV[2] ms until that period ends,
-- ARGV[3] number of calls in flight, then per call: reservation id, USD, lease end (ms).
-- Another worker may have seeded first: then nothing changes. Returns 1 if seeded here.
if redis.call('EXISTS', KEYS[4]) == 1 then
  return 0
end
local spent, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
if spent > 0 and ttl > 0 and redis.call('EXISTS', KEYS[3]) == 0 then
  redis.call('SET', KEYS[3], spent, 'PX', ttl)
end
local n = tonumber(ARGV[3])
local a = 4
local longest = 0
for i = 1, n do
  local id, amount, till = ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  a = a + 3
  if redis.call('HEXISTS', KEYS[2], id) == 0 then
    redis.call('ZADD', KEYS[1], till, id)
    redis.call('HSET', KEYS[2], id, amount)
    redis.call('HINCRBYFLOAT', KEYS[2], '_reserved', amount)
  end
  if till > longest then longest = till end
end
if n > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local keep = math.max(longest - now, 0) + 1000
  redis.call('PEXPIRE', KEYS[1], keep)
  redis.call('PEXPIRE', KEYS[2], keep)
end
redis.call('SET', KEYS[4], 1)
return 1

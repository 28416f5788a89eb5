-- Sluice settlement: correct a reservation to what the call really used, and record
-- the deployment's health (latency, failures, cooldown). Runs after core's
-- core/src/budgets/charge.lua, which defines charge_spent (shared with native batches).
--
-- ARGV[1] reservation id, ARGV[2] number of scopes,
-- ARGV[3] outcome 'ok' | 'fail' | 'none' (no health update),
-- ARGV[4] latency ms, ARGV[5] ttft ms (0 = none),
-- ARGV[6] immediate cooldown ms (0 = none), ARGV[7] counts as a failure (0|1),
-- ARGV[8] allowed fails per minute, ARGV[9] cooldown ms after too many failures;
-- then per scope: kind, actual amount, period ms.
-- KEYS[1] cooldown key, KEYS[2] stats hash, KEYS[3] busy lease zset, KEYS[4] fails
-- counter; then the scope keys as in admit.lua.
local res = ARGV[1]
local n = tonumber(ARGV[2])
local outcome = ARGV[3]
local cool, stats, busy, fails = KEYS[1], KEYS[2], KEYS[3], KEYS[4]

redis.call('ZREM', busy, res)
local function ewma(field, v)
  local old = tonumber(redis.call('HGET', stats, field) or '')
  if old then v = old * 0.8 + v * 0.2 end
  redis.call('HSET', stats, field, v)
end
if outcome ~= 'none' then
  local latency, ttft = tonumber(ARGV[4]), tonumber(ARGV[5])
  if outcome == 'ok' then
    ewma('latency_ms', latency)
    if ttft > 0 then ewma('ttft_ms', ttft) end
  end
  -- A cooldown only ever extends.
  local function cool_for(ms)
    if ms <= 0 then return end
    local ttl = redis.call('PTTL', cool)
    if ttl < ms then redis.call('SET', cool, '1', 'PX', ms) end
  end
  cool_for(tonumber(ARGV[6]))
  if ARGV[7] == '1' then
    local f = redis.call('INCR', fails)
    if f == 1 then redis.call('PEXPIRE', fails, 60000) end
    if f > tonumber(ARGV[8]) then cool_for(tonumber(ARGV[9])) end
  end
  redis.call('PEXPIRE', stats, 86400000)
end

local a, k = 10, 5
for s = 1, n do
  local kind, actual, period = ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  a = a + 3
  if kind == 'rpm' then
    k = k + 1
  elseif kind == 'tpm' then
    local z, h = KEYS[k], KEYS[k + 1]; k = k + 2
    local old = redis.call('HGET', h, res)
    if old then
      redis.call('HSET', h, res, actual)
      redis.call('HINCRBY', h, '_total', actual - tonumber(old))
      if tonumber(redis.call('HINCRBY', h, '_inflight', -1)) < 0 then
        redis.call('HSET', h, '_inflight', 0)
      end
    end
  elseif kind == 'par' then
    redis.call('ZREM', KEYS[k], res); k = k + 1
  elseif kind == 'bud' then
    local z, h, sp, mark = KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]; k = k + 4
    local held = redis.call('HGET', h, res)
    if held then
      redis.call('HDEL', h, res)
      redis.call('HINCRBYFLOAT', h, '_reserved', -tonumber(held))
      redis.call('ZREM', z, res)
    end
    charge_spent(sp, mark, actual, period)
  end
end
return 1

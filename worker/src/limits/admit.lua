-- Sluice admission: pick the deployment to call and reserve the call against every
-- limit that applies to it, atomically, in one round trip.
--
-- ARGV[1] reservation id   ARGV[2] lease ms   ARGV[3] number of candidates
-- ARGV[4] strategy: 'shuffle' (as given) | 'least-busy' | 'latency' | 'usage'
-- then per candidate: order, cooldowns on (0|1), number of scopes, then per scope:
--   kind ('rpm'|'tpm'|'par'|'bud'), limit, amount, period ms, label
-- KEYS[1]: the job's cancellation mark; then per candidate: cooldown key, stats hash, busy lease zset, tpm amounts hash (for
--   'usage'), then per scope: rpm 1 (log zset) · tpm 2 (log zset, amounts hash with
--   '_total') · par 1 (lease zset) · bud 4 (lease zset, amounts hash with '_reserved',
--   spent string, seeded mark)
-- Candidates are tried by (order, strategy score, given position). A cooling-down
-- deployment is skipped.
-- Returns {1, candidate, '', now ms} admitted · {0, wait ms, label, cooling (0|1)}
--   nothing fits now · {-1, 0, label} the request can never fit · {-2, 0, 'cancelled'}
--   the job was cancelled · {-3, 0, label} a budget's counters are not in Redis (never
--   seeded, or Redis lost them): seed them from the ledger (seed.lua) and ask again.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local res = ARGV[1]
local lease = tonumber(ARGV[2])
local ncand = tonumber(ARGV[3])
local strategy = ARGV[4]
local a, k = 5, 2
if redis.call('EXISTS', KEYS[1]) == 1 then
  return { -2, 0, 'cancelled' }
end

local function prune(z, h, cutoff)
  local freed = 0
  while true do
    local old = redis.call('ZRANGEBYSCORE', z, '-inf', cutoff, 'LIMIT', 0, 500)
    if #old == 0 then break end
    if h then
      local vals = redis.call('HMGET', h, unpack(old))
      for i = 1, #vals do freed = freed + (tonumber(vals[i]) or 0) end
      redis.call('HDEL', h, unpack(old))
    end
    redis.call('ZREM', z, unpack(old))
    if #old < 500 then break end
  end
  return freed
end

-- Parse every candidate first.
local cands = {}
for c = 1, ncand do
  local cand = { idx = c, order = tonumber(ARGV[a]), cooling_on = ARGV[a + 1] == '1', scopes = {} }
  local n = tonumber(ARGV[a + 2]); a = a + 3
  cand.cool, cand.stats, cand.busy, cand.usage = KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]; k = k + 4
  for s = 1, n do
    local sc = { kind = ARGV[a], limit = tonumber(ARGV[a + 1]), amount = tonumber(ARGV[a + 2]),
                 period = tonumber(ARGV[a + 3]), label = ARGV[a + 4] }
    a = a + 5
    if sc.kind == 'rpm' or sc.kind == 'par' then sc.z = KEYS[k]; k = k + 1
    elseif sc.kind == 'tpm' then sc.z, sc.h = KEYS[k], KEYS[k + 1]; k = k + 2
    elseif sc.kind == 'bud' then sc.z, sc.h, sc.s, sc.m = KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]; k = k + 4 end
    cand.scopes[#cand.scopes + 1] = sc
  end
  local score = 0
  if strategy == 'latency' then
    score = tonumber(redis.call('HGET', cand.stats, 'latency_ms') or '0') or 0
  elseif strategy == 'least-busy' then
    redis.call('ZREMRANGEBYSCORE', cand.busy, '-inf', now)
    score = redis.call('ZCARD', cand.busy)
  elseif strategy == 'usage' then
    score = tonumber(redis.call('HGET', cand.usage, '_total') or '0') or 0
  end
  cand.score = score
  cands[c] = cand
end
table.sort(cands, function(x, y)
  if x.order ~= y.order then return x.order < y.order end
  if x.score ~= y.score then return x.score < y.score end
  return x.idx < y.idx
end)

-- A budget Redis does not know (its seeded mark is gone) is rebuilt before anything is
-- admitted against it: Redis is a cache of the ledger's spend, never the only copy.
for _, cand in ipairs(cands) do
  for _, sc in ipairs(cand.scopes) do
    if sc.kind == 'bud' and redis.call('EXISTS', sc.m) == 0 then
      return { -3, 0, sc.label }
    end
  end
end

local best_wait, best_label, best_cooling, never_label = nil, '', 0, nil
for _, cand in ipairs(cands) do
  local ok, wait, label, cooling = true, 0, '', 0
  if cand.cooling_on then
    local ttl = redis.call('PTTL', cand.cool)
    if ttl > 0 then
      ok, wait, label, cooling = false, ttl, 'cooldown', 1
    end
  end
  if ok then
    for _, sc in ipairs(cand.scopes) do
      local w = 0
      if sc.kind == 'rpm' then
        prune(sc.z, nil, now - sc.period)
        local count = redis.call('ZCARD', sc.z)
        if count + 1 > sc.limit then
          local e = redis.call('ZRANGE', sc.z, count - sc.limit, count - sc.limit, 'WITHSCORES')
          w = (tonumber(e[2]) or now) + sc.period - now
        end
      elseif sc.kind == 'tpm' then
        local freed = prune(sc.z, sc.h, now - sc.period)
        if freed > 0 then redis.call('HINCRBY', sc.h, '_total', -freed) end
        local total = tonumber(redis.call('HGET', sc.h, '_total') or '0')
        if sc.amount > sc.limit then
          never_label = sc.label
          w = -1
        elseif total + sc.amount > sc.limit then
          -- When enough of the window's tokens age out; sooner if calls in flight may
          -- settle below their estimates.
          local need = total + sc.amount - sc.limit
          local entries = redis.call('ZRANGE', sc.z, 0, 999, 'WITHSCORES')
          w = sc.period
          local acc = 0
          for i = 1, #entries, 2 do
            acc = acc + (tonumber(redis.call('HGET', sc.h, entries[i]) or '0') or 0)
            if acc >= need then
              w = tonumber(entries[i + 1]) + sc.period - now
              break
            end
          end
          if tonumber(redis.call('HGET', sc.h, '_inflight') or '0') > 0 then
            w = math.min(w, 1000)
          end
        end
      elseif sc.kind == 'par' then
        prune(sc.z, nil, now)
        local count = redis.call('ZCARD', sc.z)
        if count + 1 > sc.limit then
          local e = redis.call('ZRANGE', sc.z, 0, 0, 'WITHSCORES')
          w = math.min((tonumber(e[2]) or now) - now, 1000)
        end
      elseif sc.kind == 'bud' then
        local freed = prune(sc.z, sc.h, now)
        if freed > 0 then redis.call('HINCRBYFLOAT', sc.h, '_reserved', -freed) end
        local reserved = tonumber(redis.call('HGET', sc.h, '_reserved') or '0')
        local spent = tonumber(redis.call('GET', sc.s) or '0')
        if spent + reserved + sc.amount > sc.limit then
          local ttl = redis.call('PTTL', sc.s)
          if ttl > 0 and spent + sc.amount > sc.limit then w = ttl else w = 1000 end
        end
      end
      if w ~= 0 then
        ok = false
        if w < 0 then wait = -1; label = sc.label
        elseif wait >= 0 and w > wait then wait = w; label = sc.label end
      end
    end
  end
  if ok then
    for _, sc in ipairs(cand.scopes) do
      if sc.kind == 'rpm' then
        redis.call('ZADD', sc.z, now, res)
        redis.call('PEXPIRE', sc.z, sc.period + 1000)
      elseif sc.kind == 'tpm' then
        redis.call('ZADD', sc.z, now, res)
        redis.call('HSET', sc.h, res, sc.amount)
        redis.call('HINCRBY', sc.h, '_total', sc.amount)
        redis.call('HINCRBY', sc.h, '_inflight', 1)
        redis.call('PEXPIRE', sc.z, sc.period + 1000)
        redis.call('PEXPIRE', sc.h, sc.period + 1000)
      elseif sc.kind == 'par' then
        redis.call('ZADD', sc.z, now + lease, res)
        redis.call('PEXPIRE', sc.z, lease + 1000)
      elseif sc.kind == 'bud' then
        redis.call('ZADD', sc.z, now + lease, res)
        redis.call('HSET', sc.h, res, sc.amount)
        redis.call('HINCRBYFLOAT', sc.h, '_reserved', sc.amount)
        redis.call('PEXPIRE', sc.z, lease + 1000)
        redis.call('PEXPIRE', sc.h, lease + 1000)
      end
    end
    if strategy == 'least-busy' then
      redis.call('ZADD', cand.busy, now + lease, res)
      redis.call('PEXPIRE', cand.busy, lease + 1000)
    end
    return { 1, cand.idx, '', now }
  end
  if wait > 0 and (best_wait == nil or wait < best_wait) then
    best_wait, best_label, best_cooling = wait, label, cooling
  end
end
if best_wait == nil then
  return { -1, 0, never_label or '' }
end
return { 0, best_wait, best_label, best_cooling }

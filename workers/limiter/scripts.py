"""The limiter's Lua scripts. Each public operation is one script call, so it is atomic across every process.

Data layout (all keys share one hash tag, so a Redis Cluster keeps them on one shard and scripts stay legal):
- request log: ZSET member = permit id, score = admission time.
- token log: ZSET member = "<permit>:i" (input, at admission) or "<permit>:o" (output, at settle), score = time;
  its amounts live in a HASH beside it, field "=sum" holding the running total (no field ends like a member).
- adaptive state: HASH {factor, at}: the effective share of the configured rate at the last counted penalty.
- tenant in-flight: ZSET member = permit id, score = lease expiry.
An entry counts while ``now - window < ts``: pruned at ``ts <= now - window``, as the simulator does.
"""

from __future__ import annotations

# Shared helpers, prepended to every script.
_PRELUDE = r"""
local SUM = '=sum'

local function clock(arg)
  if arg ~= '' then return tonumber(arg) end
  -- One clock for every host: the Redis server's.
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function opt(arg)
  if arg == '' then return nil end
  return tonumber(arg)
end

-- Floats cross the Lua boundary as strings: a Lua number reply would be truncated to an integer.
local function fmt(x) return string.format('%.17g', x) end
-- Integers as plain digits (HINCRBY refuses an exponent form).
local function int(x) return string.format('%d', x) end

local function prune_requests(key, cutoff)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', cutoff)
  return redis.call('ZCARD', key)
end

-- Drop the token entries that left the window and return the running total: each entry is read once on the
-- way in and once on the way out, so a call costs O(log n) amortized, never a sum over the window.
local function prune_tokens(zkey, hkey, cutoff)
  local gone = redis.call('ZRANGEBYSCORE', zkey, '-inf', cutoff)
  if #gone > 0 then
    redis.call('ZREMRANGEBYSCORE', zkey, '-inf', cutoff)
  end
  if redis.call('ZCARD', zkey) == 0 then
    -- Empty log: the total is 0 by definition; this also heals any drift (e.g. keys that expired apart).
    redis.call('DEL', hkey)
    return 0
  end
  if #gone > 0 then
    local removed = 0
    for i = 1, #gone, 500 do  -- unpack() has a bounded stack
      local chunk = {unpack(gone, i, math.min(i + 499, #gone))}
      local amounts = redis.call('HMGET', hkey, unpack(chunk))
      for j = 1, #amounts do removed = removed + (tonumber(amounts[j]) or 0) end
      redis.call('HDEL', hkey, unpack(chunk))
    end
    return redis.call('HINCRBY', hkey, SUM, int(-removed))
  end
  return tonumber(redis.call('HGET', hkey, SUM) or '0')
end

local function add_tokens(zkey, hkey, ts, member, amount, ttl_ms)
  local old = tonumber(redis.call('HGET', hkey, member) or '0')
  redis.call('ZADD', zkey, ts, member)
  redis.call('HSET', hkey, member, int(amount))
  redis.call('HINCRBY', hkey, SUM, int(amount - old))
  redis.call('PEXPIRE', zkey, ttl_ms)
  redis.call('PEXPIRE', hkey, ttl_ms)
end

-- Seconds until enough of the oldest requests leave the window for one more to fit under `limit` (0: fits).
local function wait_requests(key, count, limit, now, window)
  local excess = count + 1 - limit
  if excess <= 0 then return 0 end
  local e = redis.call('ZRANGE', key, excess - 1, excess - 1, 'WITHSCORES')
  return tonumber(e[2]) + window - now
end

-- The same for `n` tokens: walk the oldest entries until the freed amount covers the excess. Only a refusal
-- walks, and it stops at the entry it needs.
local function wait_tokens(zkey, hkey, total, n, limit, now, window)
  local excess = total + n - limit
  if excess <= 0 then return 0 end
  local freed, start = 0, 0
  while true do
    local page = redis.call('ZRANGE', zkey, start, start + 127, 'WITHSCORES')
    if #page == 0 then return math.huge end
    local members = {}
    for i = 1, #page, 2 do members[#members + 1] = page[i] end
    local amounts = redis.call('HMGET', hkey, unpack(members))
    for i = 1, #members do
      freed = freed + (tonumber(amounts[i]) or 0)
      if freed >= excess then return tonumber(page[2 * i]) + window - now end
    end
    start = start + 128
  end
end

-- The effective share of the configured rate now, and the time of the last counted penalty (nil: none).
local function share(akey, now, recovery)
  local v = redis.call('HMGET', akey, 'factor', 'at')
  if not v[1] then return 1, nil end
  local at = tonumber(v[2])
  return math.min(1, tonumber(v[1]) + recovery * math.max(0, now - at)), at
end

local function scaled(limit, f)
  if not limit then return nil end
  -- The epsilon absorbs float error (500 * 0.8 must give 400, not 399).
  return math.max(1, math.floor(limit * f + 1e-6))
end
"""

# KEYS: m_req m_tok m_amt m_adapt t_req t_tok t_amt t_inflight
# ARGV: now permit tokens rpm tpm t_rpm t_tpm t_conc hold window recovery poll
# -> {granted 0|1, reason, retry_after, at}
ACQUIRE = (
    _PRELUDE
    + r"""
local now, permit, n = clock(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local rpm, tpm, trpm, ttpm, tconc = opt(ARGV[4]), opt(ARGV[5]), opt(ARGV[6]), opt(ARGV[7]), opt(ARGV[8])
local hold, window, recovery, poll = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12])
local cutoff = now - window
local ttl = int(math.ceil((window + 1) * 1000))

-- A retried call (e.g. redis-py re-sending after a dropped connection, or a job dispatched again under the same
-- permit) must not take a second slot. It is granted again without new rate entries, but only while the permit
-- still holds its concurrency slot, or a slot is free for it: a released permit re-granted without that check
-- would let a tenant run past its concurrency limit.
local seen = redis.call('ZSCORE', KEYS[1], permit)
if seen and tonumber(seen) > cutoff then
  redis.call('ZREMRANGEBYSCORE', KEYS[8], '-inf', now)
  if not redis.call('ZSCORE', KEYS[8], permit) then
    if tconc and redis.call('ZCARD', KEYS[8]) >= tconc then
      local first = redis.call('ZRANGE', KEYS[8], 0, 0, 'WITHSCORES')
      local wait = math.max(0.001, math.min(poll, tonumber(first[2]) - now))
      return {0, 'tenant_concurrency', fmt(wait), fmt(now)}
    end
    redis.call('ZADD', KEYS[8], now + hold, permit)
    local lease_ttl = math.ceil((hold + 1) * 1000)
    if redis.call('PTTL', KEYS[8]) < lease_ttl then redis.call('PEXPIRE', KEYS[8], int(lease_ttl)) end
  end
  return {1, '', '0', fmt(tonumber(seen))}
end

-- Never grantable: say so at once instead of letting the caller wait forever.
if tpm and n > tpm then return {0, 'tpm', 'inf', fmt(now)} end
if ttpm and n > ttpm then return {0, 'tenant_tpm', 'inf', fmt(now)} end

local m_count = prune_requests(KEYS[1], cutoff)
local m_tokens = prune_tokens(KEYS[2], KEYS[3], cutoff)
local t_count = prune_requests(KEYS[5], cutoff)
local t_tokens = prune_tokens(KEYS[6], KEYS[7], cutoff)
redis.call('ZREMRANGEBYSCORE', KEYS[8], '-inf', now)  -- leases of crashed holders
local in_flight = redis.call('ZCARD', KEYS[8])
if redis.call('ZSCORE', KEYS[8], permit) then in_flight = in_flight - 1 end

-- Check every dimension before writing anything (all or nothing). The request fits once every dimension
-- fits; each only gets better as entries age out, so the wait is the longest of the refusals.
local worst, reason = 0, nil
local function refuse(wait, why)
  if wait > 0 and (reason == nil or wait > worst) then worst, reason = wait, why end
end

local f = share(KEYS[4], now, recovery)
if rpm then refuse(wait_requests(KEYS[1], m_count, scaled(rpm, f), now, window), 'rpm') end
if tpm then
  local eff = scaled(tpm, f)
  if n <= eff then
    refuse(wait_tokens(KEYS[2], KEYS[3], m_tokens, n, eff, now, window), 'tpm')
  elseif recovery <= 0 then
    refuse(math.huge, 'tpm')
  else
    -- Too big for the lowered rate: first the rate must recover to n, then the log drain under that rate.
    local rec = (n / tpm - f) / recovery + 0.001
    local later = math.max(n, scaled(tpm, math.min(1, f + recovery * rec)))
    refuse(math.max(rec, wait_tokens(KEYS[2], KEYS[3], m_tokens, n, later, now, window)), 'tpm')
  end
end
if trpm then refuse(wait_requests(KEYS[5], t_count, trpm, now, window), 'tenant_rpm') end
if ttpm then refuse(wait_tokens(KEYS[6], KEYS[7], t_tokens, n, ttpm, now, window), 'tenant_tpm') end
if tconc and in_flight >= tconc then
  -- A release can free a slot at any moment, so the lease expiry is only an upper bound: poll sooner.
  local first = redis.call('ZRANGE', KEYS[8], 0, 0, 'WITHSCORES')
  refuse(math.max(0.001, math.min(poll, tonumber(first[2]) - now)), 'tenant_concurrency')
end
if reason then return {0, reason, fmt(worst), fmt(now)} end

redis.call('ZADD', KEYS[1], now, permit)
redis.call('PEXPIRE', KEYS[1], ttl)
add_tokens(KEYS[2], KEYS[3], now, permit .. ':i', n, ttl)
redis.call('ZADD', KEYS[5], now, permit)
redis.call('PEXPIRE', KEYS[5], ttl)
add_tokens(KEYS[6], KEYS[7], now, permit .. ':i', n, ttl)
redis.call('ZADD', KEYS[8], now + hold, permit)
local lease_ttl = math.ceil((hold + 1) * 1000)
if redis.call('PTTL', KEYS[8]) < lease_ttl then redis.call('PEXPIRE', KEYS[8], int(lease_ttl)) end
return {1, '', '0', fmt(now)}
"""
)

# KEYS: m_req m_tok m_amt t_req t_tok t_amt settled_marker [t_inflight]
# ARGV: now permit input output window marker_ttl_ms -> 1 settled, 0 already settled
# With t_inflight, the tenant's concurrency slot is freed too, settled before or not (one round trip per call
# fewer than a separate release, issue 17.1).
SETTLE = (
    _PRELUDE
    + r"""
local now, permit = clock(ARGV[1]), ARGV[2]
if KEYS[8] then redis.call('ZREM', KEYS[8], permit) end
local input, output, window = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
if not redis.call('SET', KEYS[7], '1', 'NX', 'PX', ARGV[6]) then return 0 end
local cutoff = now - window
local ttl = int(math.ceil((window + 1) * 1000))
local function settle(req, tok, amt)
  prune_requests(req, cutoff)
  prune_tokens(tok, amt, cutoff)
  -- The upstream counted the input when it admitted the call: correct the reservation in place. If the
  -- admission already left the window, so did the input, and only the output still counts.
  local admitted = redis.call('ZSCORE', req, permit)
  if admitted then add_tokens(tok, amt, tonumber(admitted), permit .. ':i', input, ttl) end
  -- The upstream counts output when it finishes, which is (no later than) now.
  if output > 0 then add_tokens(tok, amt, now, permit .. ':o', output, ttl) end
end
settle(KEYS[1], KEYS[2], KEYS[3])
settle(KEYS[4], KEYS[5], KEYS[6])
return 1
"""
)

# KEYS: m_req m_tok m_amt t_req t_tok t_amt t_inflight  ARGV: permit -> 1
# A grant whose call will never be made (its job ended before a worker claimed it): every trace of it goes, so
# its request, its reserved input and its concurrency slot are free for the next call at once.
FORFEIT = (
    _PRELUDE
    + r"""
local permit = ARGV[1]
local function drop_tokens(zkey, hkey, member)
  if redis.call('ZREM', zkey, member) == 1 then
    local amount = tonumber(redis.call('HGET', hkey, member) or '0')
    redis.call('HDEL', hkey, member)
    if amount ~= 0 then redis.call('HINCRBY', hkey, SUM, int(-amount)) end
  end
end
redis.call('ZREM', KEYS[1], permit)
drop_tokens(KEYS[2], KEYS[3], permit .. ':i')
drop_tokens(KEYS[2], KEYS[3], permit .. ':o')
redis.call('ZREM', KEYS[4], permit)
drop_tokens(KEYS[5], KEYS[6], permit .. ':i')
drop_tokens(KEYS[5], KEYS[6], permit .. ':o')
redis.call('ZREM', KEYS[7], permit)
return 1
"""
)

# KEYS: t_inflight  ARGV: now permit hold -> 1 extended, 0 not held (released or lapsed)
EXTEND = (
    _PRELUDE
    + r"""
local now, permit, hold = clock(ARGV[1]), ARGV[2], tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
-- A lapsed lease is not revived: its slot may already belong to someone else.
if not redis.call('ZSCORE', KEYS[1], permit) then return 0 end
redis.call('ZADD', KEYS[1], 'XX', now + hold, permit)
local lease_ttl = math.ceil((hold + 1) * 1000)
if redis.call('PTTL', KEYS[1]) < lease_ttl then redis.call('PEXPIRE', KEYS[1], int(lease_ttl)) end
return 1
"""
)

# KEYS: m_req m_tok t_req t_tok  ARGV: now permit -> 1
# The call leaves now: its request and input entries count from this moment, never earlier (GT), so a call that
# waited in a queue after its grant cannot land in MiniMax's window beside the calls that replace it a minute on.
MARK_SENT = (
    _PRELUDE
    + r"""
local now, permit = clock(ARGV[1]), ARGV[2]
local at = fmt(now)
redis.call('ZADD', KEYS[1], 'XX', 'GT', at, permit)
redis.call('ZADD', KEYS[2], 'XX', 'GT', at, permit .. ':i')
redis.call('ZADD', KEYS[3], 'XX', 'GT', at, permit)
redis.call('ZADD', KEYS[4], 'XX', 'GT', at, permit .. ':i')
return 1
"""
)

# KEYS: m_adapt  ARGV: now decrease floor recovery cooldown -> {factor, counted 0|1}
PENALIZE = (
    _PRELUDE
    + r"""
local now = clock(ARGV[1])
local decrease, floor, recovery, cooldown = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local f, at = share(KEYS[1], now, recovery)
-- 429s from calls that were already in flight describe the same overload: count the burst once.
if at and now - at < cooldown then return {fmt(f), 0} end
f = math.max(floor, f * decrease)
redis.call('HSET', KEYS[1], 'factor', fmt(f), 'at', fmt(now))
-- Once fully recovered the state is meaningless; let it expire then.
local full = recovery > 0 and (1 - f) / recovery or 86400
redis.call('PEXPIRE', KEYS[1], int(math.ceil((full + cooldown + 1) * 1000)))
return {fmt(f), 1}
"""
)

# KEYS: m_req m_tok m_amt m_adapt  ARGV: now rpm tpm window recovery
# -> {requests, tokens, eff_rpm, eff_tpm, factor, penalized_at, now}
SNAPSHOT = (
    _PRELUDE
    + r"""
local now, rpm, tpm = clock(ARGV[1]), opt(ARGV[2]), opt(ARGV[3])
local window, recovery = tonumber(ARGV[4]), tonumber(ARGV[5])
local cutoff = now - window
local requests = prune_requests(KEYS[1], cutoff)
local tokens = prune_tokens(KEYS[2], KEYS[3], cutoff)
local f, at = share(KEYS[4], now, recovery)
local function s(x) if x then return int(x) end return '' end
return {requests, int(tokens), s(scaled(rpm, f)), s(scaled(tpm, f)), fmt(f), at and fmt(at) or '', fmt(now)}
"""
)

# KEYS: t_req t_tok t_amt t_inflight  ARGV: now window -> {requests, tokens, in_flight, now}
TENANT_SNAPSHOT = (
    _PRELUDE
    + r"""
local now, window = clock(ARGV[1]), tonumber(ARGV[2])
local cutoff = now - window
local requests = prune_requests(KEYS[1], cutoff)
local tokens = prune_tokens(KEYS[2], KEYS[3], cutoff)
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
return {requests, int(tokens), redis.call('ZCARD', KEYS[4]), fmt(now)}
"""
)

-- keyward rate limiter: one atomic decision for one account (API.md §Rate limits).
--
-- The window rule of keyward-ratelimit (src/lib.rs), which src/local.rs counts in process;
-- src/redis/mod.rs explains the design. The test vectors of src/vectors.rs run against both.
--
-- KEYS[1] minute window: LIST of bucket indexes (seconds since the epoch), oldest first
-- KEYS[2] minute window: HASH bucket index -> count, plus field "n" = sum of the counts
-- KEYS[3] day window:    LIST of bucket indexes (minutes since the epoch), oldest first
-- KEYS[4] day window:    HASH bucket index -> count, plus field "n"
-- KEYS[5] month window:  HASH m = month number (year * 12 + month - 1, UTC), n = count
-- ARGV[1] per-minute limit, or -1 when unlimited
-- ARGV[2] per-day limit, or -1 when unlimited
-- ARGV[3] per-month limit (the quota), or -1 when unlimited
-- ARGV[4] "1" to count the request when it is allowed, "0" to only look (peek)
-- ARGV[5] tests only, never set in production (left "" there): the time in ms since the
--         epoch to use instead of the server's. It exists so that the shared test vectors
--         can state the time of each request, and a replay can compare with the local
--         limiter over days of traffic; production leaves it out so every node counts on
--         Redis's clock.
-- ARGV[6] the month number of the stored count in ARGV[7], or "" without one
-- ARGV[7] the account's requests of that month as storage holds them
--
-- A key's credits, only for a key's own limits (the rule of `credit_step` in src/lib.rs):
-- KEYS[6] HASH g = generation of the credits the balance started from, p = refill period
--         of the last refill or start, b = balance
-- ARGV[8] cost; ARGV[9] generation; ARGV[10] the balance a caller set; ARGV[11] refill
--         amount, or -1 without a refill; ARGV[12] the refill period now (the caller's UTC
--         day or month number, -1 without a refill); ARGV[13] the refill period the balance
--         was set in
--
-- Returns {-1, month number} and changes nothing when the month is limited and has no
-- count yet in KEYS[5] and ARGV[6] is not that month: the caller reads the stored count of
-- that month and runs the script again with it, which sets it only if still absent.
-- Otherwise returns {allowed (1/0), limit, remaining, reset_secs, retry_after_secs (-1 when
-- allowed), refusing window (0 none, 1 minute, 2 day, 3 month)} for the tighter window,
-- and with KEYS[6] also {refused for credits (1/0), balance after}.
--
-- Cost: O(1) per request plus O(buckets evicted); only a refusal walks the oldest buckets,
-- and that walk stops as soon as the count would drop below the limit (one step unless the
-- limit was lowered). No call ever reads a whole day window the way HGETALL would.

-- Redis < 5 must be told to replicate effects, or writes after TIME are refused; from 5 on
-- this is the default and the call is a no-op.
if redis.replicate_commands then
  redis.replicate_commands()
end

-- The server's clock, not the caller's: every node then agrees on the buckets even when
-- their own clocks are skewed.
local now_ms = tonumber(ARGV[5])
if not now_ms then
  local t = redis.call('TIME')
  now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local consume = ARGV[4] == '1'

-- The calendar (proleptic Gregorian, UTC) from days since 1970-01-01 and back, by
-- Howard Hinnant's algorithms; the Rust side uses the `time` crate, and the vectors hold
-- the two together at month and year edges.
local function civil_from_days(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then
    y = y + 1
  end
  return y, m
end

local function days_from_civil(y, m)
  if m <= 2 then
    y = y - 1
  end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = m > 2 and m - 3 or m + 9
  local doy = math.floor((153 * mp + 2) / 5)
  return era * 146097 + yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy - 719468
end

-- The month window: the month's count, started from storage's the first time any node
-- needs it (set only if absent, in this atomic step).
local month = { limit = tonumber(ARGV[3]), total = 0 }
if month.limit >= 0 then
  local y, m = civil_from_days(math.floor(now_ms / 86400000))
  month.number = y * 12 + m - 1
  if m == 12 then
    y, m = y + 1, 1
  else
    m = m + 1
  end
  month.end_ms = days_from_civil(y, m) * 86400000
  local state = redis.call('HMGET', KEYS[5], 'm', 'n')
  if tonumber(state[1]) == month.number then
    month.total = tonumber(state[2]) or 0
  elseif tonumber(ARGV[6]) == month.number then
    month.total = tonumber(ARGV[7])
    redis.call('HSET', KEYS[5], 'm', string.format('%d', month.number), 'n', string.format('%d', month.total))
    -- Useless once the month is over (plus a second of slack).
    redis.call('PEXPIRE', KEYS[5], month.end_ms - now_ms + 1000)
  else
    return { -1, month.number }
  end
end

-- Seconds until the month is over, rounded up.
local function secs_until_month_end()
  return math.floor((month.end_ms - now_ms + 999) / 1000)
end

local function window(list, hash, bucket_ms, span, limit)
  return {
    list = list,
    hash = hash,
    bucket_ms = bucket_ms,
    span = span,
    limit = tonumber(limit),
    current = math.floor(now_ms / bucket_ms),
    total = 0,
  }
end

local minute = window(KEYS[1], KEYS[2], 1000, 61, ARGV[1])
minute.code = 1
local day = window(KEYS[3], KEYS[4], 60000, 1441, ARGV[2])
day.code = 2
local windows = { minute, day }

-- Bucket indexes are integers well below 2^53; '%d' keeps them free of exponents.
local function field(idx)
  return string.format('%d', idx)
end

-- Milliseconds until bucket `idx` stops counting, rounded up to whole seconds.
local function secs_until_out(w, idx)
  local ms = (idx + w.span) * w.bucket_ms - now_ms
  if ms < 0 then
    return 0
  end
  return math.floor((ms + 999) / 1000)
end

-- Drops buckets that have left the window and loads the window's total.
local function evict(w)
  while true do
    local head = redis.call('LINDEX', w.list, 0)
    if not head or tonumber(head) > w.current - w.span then
      break
    end
    redis.call('LPOP', w.list)
    local n = tonumber(redis.call('HGET', w.hash, head) or 0)
    redis.call('HDEL', w.hash, head)
    redis.call('HINCRBY', w.hash, 'n', -n)
  end
  if redis.call('EXISTS', w.list) == 0 then
    -- Nothing counts any more: drop the counters too, so an idle account holds no memory
    -- even before its keys expire.
    redis.call('DEL', w.hash)
    w.total = 0
  else
    w.total = math.max(0, tonumber(redis.call('HGET', w.hash, 'n') or 0))
  end
end

-- Seconds until the count drops below the limit: walk the oldest buckets until enough
-- requests have left.
local function retry_after(w)
  local left = w.total
  local start = 0
  while true do
    local chunk = redis.call('LRANGE', w.list, start, start + 63)
    if #chunk == 0 then
      return 1
    end
    for _, idx in ipairs(chunk) do
      left = left - tonumber(redis.call('HGET', w.hash, idx) or 0)
      if left < w.limit then
        return math.max(1, secs_until_out(w, tonumber(idx)))
      end
    end
    start = start + 64
  end
end

local function add(w)
  local idx = w.current
  local tail = redis.call('LINDEX', w.list, -1)
  if tail and tonumber(tail) >= idx then
    -- Same bucket as the last request, or the server clock stepped back: count it in the
    -- newest bucket so the list stays ordered (the request then counts a little longer).
    idx = tonumber(tail)
  else
    redis.call('RPUSH', w.list, field(idx))
  end
  redis.call('HINCRBY', w.hash, field(idx), 1)
  redis.call('HINCRBY', w.hash, 'n', 1)
  w.total = w.total + 1
  -- The keys are useless once the newest bucket has left the window, so let them vanish
  -- then (plus a second of slack) without any sweeper.
  local ttl = (idx + w.span) * w.bucket_ms - now_ms + 1000
  redis.call('PEXPIRE', w.list, ttl)
  redis.call('PEXPIRE', w.hash, ttl)
end

-- An unlimited window is neither read nor counted; its old keys, if any, simply expire.
for _, w in ipairs(windows) do
  if w.limit >= 0 then
    evict(w)
  end
end

-- The full window that decides retry-after refuses; the wider on a tie.
local allowed = true
local retry = -1
local refused_by = 0
local function refuse(code, secs)
  allowed = false
  if secs >= retry then
    retry = secs
    refused_by = code
  end
end
for _, w in ipairs(windows) do
  if w.limit >= 0 and w.total >= w.limit then
    refuse(w.code, retry_after(w))
  end
end
if month.limit >= 0 and month.total >= month.limit then
  refuse(3, math.max(1, secs_until_month_end()))
end

-- Credits: checked once the windows have room, taken only with them (one atomic step, so
-- concurrent requests never spend a balance twice nor below zero).
local credit_reply = nil
if KEYS[6] then
  local cost = tonumber(ARGV[8])
  local generation = ARGV[9]
  local amount = tonumber(ARGV[11])
  local period = tonumber(ARGV[12])
  local state = redis.call('HMGET', KEYS[6], 'g', 'p', 'b')
  local known = state[1] == generation
  local p, b
  if known then
    p, b = tonumber(state[2]), tonumber(state[3])
  else
    p, b = tonumber(ARGV[13]), tonumber(ARGV[10])
  end
  local changed = not known
  if amount >= 0 and period > p then
    p, b = period, amount
    changed = true
  end
  local refused = 0
  if allowed and b < cost then
    allowed = false
    refused = 1
  end
  if allowed and consume then
    b = b - cost
    changed = true
  end
  if changed and (consume or known) then
    redis.call('HSET', KEYS[6], 'g', generation, 'p', string.format('%d', p), 'b', string.format('%d', b))
    -- A balance outlives any idle spell a caller would expect it to (400 days).
    redis.call('EXPIRE', KEYS[6], 34560000)
  end
  credit_reply = { refused, b }
end

-- Refused requests and peeks consume nothing.
if allowed and consume then
  for _, w in ipairs(windows) do
    if w.limit >= 0 then
      add(w)
    end
  end
  if month.limit >= 0 then
    month.total = redis.call('HINCRBY', KEYS[5], 'n', 1)
  end
end

-- The tighter window is the one with fewer requests left; ties go to the narrower.
local shown_limit, shown_remaining, shown_reset = 0, 0, 0
local shown = false
for _, w in ipairs(windows) do
  if w.limit >= 0 then
    local remaining = math.max(0, w.limit - w.total)
    if not shown or remaining < shown_remaining then
      shown = true
      shown_limit = w.limit
      shown_remaining = remaining
      local head = redis.call('LINDEX', w.list, 0)
      shown_reset = head and secs_until_out(w, tonumber(head)) or 0
    end
  end
end
if month.limit >= 0 then
  local remaining = math.max(0, month.limit - month.total)
  if not shown or remaining < shown_remaining then
    shown_limit = month.limit
    shown_remaining = remaining
    shown_reset = month.total > 0 and secs_until_month_end() or 0
  end
end

if credit_reply then
  return { allowed and 1 or 0, shown_limit, shown_remaining, shown_reset, retry, refused_by, credit_reply[1], credit_reply[2] }
end
return { allowed and 1 or 0, shown_limit, shown_remaining, shown_reset, retry, refused_by }

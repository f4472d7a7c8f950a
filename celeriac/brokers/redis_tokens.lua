-- tokens: a token bucket shared by every worker (global_rate_limit).
--
-- ARGV: [1] layout, [2] bucket key (full), [3] rate (tokens/s), [4] burst, [5] n.
-- The bucket is a hash {tokens, stamp}; a missing bucket is full, so it expires
-- once it would have refilled anyway.  Times are the server's, so workers with
-- skewed clocks share one bucket fairly.
-- Returns "0" when n tokens were taken, else the seconds to wait (nothing taken).

local key = ARGV[2]
local rate, burst, n = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
if burst < n then burst = n end
local now = server_now()
local stored = redis.call('HMGET', key, 'tokens', 'stamp')
local level = burst
if stored[1] and stored[2] then
  local elapsed = now - tonumber(stored[2])
  if elapsed < 0 then elapsed = 0 end
  level = math.min(burst, tonumber(stored[1]) + elapsed * rate)
end
local wait = 0
if level >= n then level = level - n else wait = (n - level) / rate end
redis.call('HSET', key, 'tokens', string.format('%.17g', level), 'stamp', string.format('%.17g', now))
redis.call('PEXPIRE', key, math.ceil((burst / rate + 1) * 1000))
return string.format('%.17g', wait)

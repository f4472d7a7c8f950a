-- release: give back every message leased to a consumer (it died or stopped).
--
-- ARGV: [1] layout, [2] consumer id.  Returns how many messages went back.

local consumer = ARGV[2]
local now = server_now()
local ckey = C.consumer_prefix .. consumer
local n = 0
for _, tag in ipairs(redis.call('SMEMBERS', ckey)) do
  if redis.call('HGET', C.lease_owner, tag) == consumer then
    n = n + restore(tag, now)
  end
end
redis.call('DEL', ckey)
return n

-- release: give back every message leased to a consumer (it died or stopped).
--
-- ARGV: [1] layout, [2] consumer id.  Returns how many messages went back.
-- It first stops counting as idle, so no publisher hands it anything more; messages
-- already handed to it (on its wake list, leased to it) go back with the rest.

local consumer = ARGV[2]
local now = server_now()
local idle = redis.call('HGET', C.idle_of, consumer)      -- "<queue>\n<lease seconds>"
if idle then
  local nl = string.find(idle, '\n', 1, true)
  redis.call('ZREM', C.idle_prefix .. (nl and string.sub(idle, 1, nl - 1) or idle), consumer)
  redis.call('HDEL', C.idle_of, consumer)
end
local ckey = C.consumer_prefix .. consumer
local n = 0
for _, tag in ipairs(redis.call('SMEMBERS', ckey)) do
  if split_lease(redis.call('HGET', C.lease, tag)) == consumer then
    n = n + restore(tag, now)
  end
end
redis.call('DEL', ckey, C.wake_prefix .. consumer)
return n

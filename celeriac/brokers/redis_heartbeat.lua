-- heartbeat: extend every lease a consumer holds and mark running ones started.
--
-- ARGV: [1] layout, [2] consumer id, [3] lease seconds, [4..] tags now running.
-- Also refreshes the tags' scores in kombu's unacked_index, so that a Celery
-- worker's visibility-timeout restore never takes a message we still hold.
-- Returns the number of leases extended.

local consumer = ARGV[2]
local now = server_now()
local expiry = now + tonumber(ARGV[3])
local ckey = C.consumer_prefix .. consumer
local extended = 0
local tags = redis.call('SMEMBERS', ckey)
for i = 1, #tags, 1000 do
  local part = {unpack(tags, i, math.min(i + 999, #tags))}
  local values = redis.call('HMGET', C.lease, unpack(part))
  for j, tag in ipairs(part) do
    if split_lease(values[j]) == consumer then
      redis.call('ZADD', C.leases, expiry, tag)
      redis.call('ZADD', C.unacked_index, 'XX', now, tag)
      extended = extended + 1
    else
      redis.call('SREM', ckey, tag)   -- stale: acked or re-leased by someone else
    end
  end
end
for i = 4, #ARGV do
  redis.call('SADD', C.started, ARGV[i])
end
return extended

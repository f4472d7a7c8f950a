-- publish: one message from our producer, handed straight to an idle consumer of its
-- queue when there is one, else pushed on its list and the doorbell rung (as before).
--
-- Standalone (no redis_lib.lua: it runs once per delay()), sent with EVAL so that a
-- server that lost its script cache (restart, SCRIPT FLUSH) still runs it.
-- KEYS: [1] list key (the priority step's), [2] doorbell, [3] the queue's idle zset,
--       [4] kombu's unacked hash, [5] unacked_index, [6] celeriac.leases, [7] celeriac.lease,
--       [8] celeriac.idle_of (consumer -> "<queue>\n<its lease seconds>")
-- ARGV: [1] queue, [2] the end of the unacked value (', "<exchange>", "<routing key>"]'),
--       [3] consumer lease-set prefix, [4] wake-list prefix, [5] lease seconds (when the
--       consumer's own are not known),
--       [6] delivery tag, [7] envelope.
-- An idle consumer (redis_fetch.lua registers one that found nothing and is about to
-- block on its wake list; member: consumer id, score: until when it counts as idle)
-- is taken off the zset and gets the message leased to it exactly as its fetch would
-- lease it (kombu's unacked hash and index, our lease records), and pushed on its wake
-- list as "h<tag>\n<queue>\n<envelope>", which ends its BRPOP with the message itself.
-- Not when the doorbell holds a token (messages published since wait on the list), nor
-- when the tag is in use.  Returns 2 when handed off, 1 when queued.

if redis.replicate_commands then pcall(redis.replicate_commands) end
local top = redis.call('ZRANGE', KEYS[3], -1, -1, 'WITHSCORES')
if top[1] then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  if tonumber(top[2]) < now then
    -- the freshest registration lapsed: so did every other
    redis.call('DEL', KEYS[3])
  elseif redis.call('EXISTS', KEYS[2]) == 0 and redis.call('HEXISTS', KEYS[4], ARGV[6]) == 0 then
    -- (a rung doorbell: messages wait on the list, e.g. a bulk send: they go first)
    local consumer, tag, queue, env = top[1], ARGV[6], ARGV[1], ARGV[7]
    redis.call('ZREM', KEYS[3], consumer)
    redis.call('HSET', KEYS[4], tag, '[' .. env .. ARGV[2])
    redis.call('ZADD', KEYS[5], now, tag)
    local reg = redis.call('HGET', KEYS[8], consumer)
    local lease = reg and tonumber(string.match(reg, '\n(.*)$')) or tonumber(ARGV[5])
    redis.call('ZADD', KEYS[6], now + lease, tag)
    redis.call('HSET', KEYS[7], tag, consumer .. '\n' .. queue)
    redis.call('SADD', ARGV[3] .. consumer, tag)
    local wake = ARGV[4] .. consumer
    redis.call('LPUSH', wake, 'h' .. tag .. '\n' .. queue .. '\n' .. env)
    redis.call('PEXPIRE', wake, 60000)
    return 2
  end
end
redis.call('LPUSH', KEYS[1], ARGV[7])
-- ring: the doorbell holds at most one token (under load it mostly has one already)
if redis.call('EXISTS', KEYS[2]) == 0 then redis.call('LPUSH', KEYS[2], '1') end
return 1

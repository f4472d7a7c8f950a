-- requeue: give leased messages back now (RPUSH: consumed next) or after a delay.
--
-- ARGV: [1] layout, [2] consumer id, then groups of 5:
--   tag, queue, list key (full), envelope marked redelivered, due ('' = now) or
--   the delayed-set member to store with that due time.
-- A message is pushed back only if ``consumer`` still holds its lease and its
-- unacked entry exists: otherwise it was already given back (lease expiry, or a
-- Celery worker's restore) and pushing it again would duplicate it.
-- Returns how many messages were requeued.

local consumer = ARGV[2]
local n = 0
for i = 3, #ARGV - 4, 5 do
  local tag, queue, key, env, due = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  if redis.call('HGET', C.lease_owner, tag) == consumer then
    drop_lease(tag)
    redis.call('ZREM', C.unacked_index, tag)
    if redis.call('HDEL', C.unacked, tag) == 1 then
      if due == '' then
        redis.call('RPUSH', key, env)
      else
        redis.call('ZADD', C.delayed, due, env)
        redis.call('ZADD', C.delayed_prefix .. queue, due, env)
      end
      ring(queue)
      n = n + 1
    end
  end
end
return n

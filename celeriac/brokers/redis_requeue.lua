-- requeue: give leased messages back now (RPUSH: consumed next) or after a delay.
--
-- ARGV: [1] layout, then groups of 6: consumer id, tag, queue, list key (full),
--   envelope marked redelivered (or, when delayed, the delayed-set member),
--   due time ('' = now).
-- A message is pushed back only if that consumer still holds its lease and its
-- unacked entry exists: otherwise it was already given back (lease expiry, or a
-- Celery worker's restore) and pushing it again would duplicate it.
-- Returns how many messages were requeued.

local n = 0
for i = 2, #ARGV - 5, 6 do
  local consumer, tag, queue = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local key, env, due = ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
  if split_lease(redis.call('HGET', C.lease, tag)) == consumer then
    if redis.call('HEXISTS', C.unacked, tag) == 1 then
      if due == '' then
        redis.call('RPUSH', key, env)
      else
        redis.call('ZADD', C.delayed, due, env)
        redis.call('ZADD', C.delayed_prefix .. queue, due, env)
      end
      ring(queue)
      n = n + 1
    end
    drop_lease(tag)
    redis.call('HDEL', C.unacked, tag)
    redis.call('ZREM', C.unacked_index, tag)
  end
end
return n

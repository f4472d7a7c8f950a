-- bury: store a dead letter and forget the leased message, atomically (a
-- MULTI would go on deleting even if the LPUSH failed).
--
-- ARGV: [1] layout, [2] the dead-letter JSON, [3] tag.

redis.call('LPUSH', C.dead_letters, ARGV[2])
redis.call('LTRIM', C.dead_letters, 0, C.dead_cap - 1)
forget(ARGV[3])
return 1

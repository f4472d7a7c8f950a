-- Compare-and-set one tick of a beat entry.
-- KEYS: entry hash, due zset, pending set.
-- ARGV: name, expected next_run, new next_run, tick, owner, now, mode ("claim" | "advance").
-- Succeeds (1) only if the entry is enabled, its next_run is exactly the expected text and no
-- tick is pending; "claim" also records the tick as last run and as pending for the owner.
local entry, due, pending = KEYS[1], KEYS[2], KEYS[3]
local name, expected, new_next, tick, owner, now, mode =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local state = redis.call('HMGET', entry, 'enabled', 'next_run', 'pending_tick')
if state[1] ~= '1' or state[2] ~= expected or state[3] then return 0 end
redis.call('HSET', entry, 'next_run', new_next)
redis.call('ZADD', due, new_next, name)
if mode == 'claim' then
  redis.call('HSET', entry, 'last_run', tick, 'pending_tick', tick, 'pending_owner', owner,
             'pending_since', now)
  redis.call('HINCRBY', entry, 'total_run_count', 1)
  redis.call('SADD', pending, name)
end
return 1

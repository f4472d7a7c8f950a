-- Small state changes of one beat entry, each atomic.
-- KEYS: entry hash, names set, due zset, pending set.  ARGV: op, name, then per op:
--   enable <next_run>         enable; a disabled entry restarts from next_run
--   disable                   take it out of the due zset
--   delete                    remove it everywhere
--   confirm <tick>            the pending tick was sent
--   take <tick> <old> <new> <now>   adopt a pending tick of a dead sender
-- Returns 1 on success, 0 if there is no such entry (or the pending tick is not as expected).
local entry, names, due, pending = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local op, name = ARGV[1], ARGV[2]
if redis.call('EXISTS', entry) == 0 then return 0 end
if op == 'enable' then
  if redis.call('HGET', entry, 'enabled') ~= '1' then
    redis.call('HSET', entry, 'enabled', '1', 'next_run', ARGV[3])
  end
  redis.call('ZADD', due, redis.call('HGET', entry, 'next_run'), name)
elseif op == 'disable' then
  redis.call('HSET', entry, 'enabled', '0')
  redis.call('ZREM', due, name)
elseif op == 'delete' then
  redis.call('DEL', entry)
  redis.call('SREM', names, name)
  redis.call('ZREM', due, name)
  redis.call('SREM', pending, name)
elseif op == 'confirm' then
  if redis.call('HGET', entry, 'pending_tick') ~= ARGV[3] then return 0 end
  redis.call('HDEL', entry, 'pending_tick', 'pending_owner', 'pending_since')
  redis.call('SREM', pending, name)
elseif op == 'take' then
  local p = redis.call('HMGET', entry, 'pending_tick', 'pending_owner')
  if p[1] ~= ARGV[3] or p[2] ~= ARGV[4] then return 0 end
  redis.call('HSET', entry, 'pending_owner', ARGV[5], 'pending_since', ARGV[6])
else
  return redis.error_reply('unknown op ' .. op)
end
return 1

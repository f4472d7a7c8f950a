-- The beat leader lease, timed by the Redis server's clock.
-- KEYS: lease key.  ARGV: op ("acquire" | "release"), owner, ttl in milliseconds.
-- acquire: take the lease if free, renew it if the owner holds it; 1 if held afterwards.
-- release: delete it if the owner holds it.
local key, op, owner = KEYS[1], ARGV[1], ARGV[2]
local holder = redis.call('GET', key)
if op == 'acquire' then
  if not holder then
    redis.call('SET', key, owner, 'PX', ARGV[3])
    return 1
  end
  if holder == owner then
    redis.call('PEXPIRE', key, ARGV[3])
    return 1
  end
  return 0
end
if holder == owner then redis.call('DEL', key) end
return 1

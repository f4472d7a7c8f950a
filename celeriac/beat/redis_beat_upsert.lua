-- Add or redefine beat entries; with mode "sync", also delete the config entries not given.
-- KEYS: names set, due zset.  ARGV: entry key prefix, mode ("put" | "put-replace" | "sync"),
-- then 8 values per entry: name, task, schedule, args, kwargs, options, enabled, next_run
-- (and for "put*" a 9th: the source of a new entry).  A row keeps its next_run, enabled and
-- counters unless its schedule text changed.  Returns 0 if "put" found the name taken.
local names, due, prefix, mode = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
local width = (mode == 'sync') and 8 or 9
if mode == 'sync' then
  local given = {}
  for i = 3, #ARGV, width do given[ARGV[i]] = true end
  for _, name in ipairs(redis.call('SMEMBERS', names)) do
    local key = prefix .. name
    if not given[name] and redis.call('HGET', key, 'source') == 'config' then
      redis.call('DEL', key)
      redis.call('SREM', names, name)
      redis.call('ZREM', due, name)
    end
  end
end
for i = 3, #ARGV, width do
  local name, task, sched, args, kwargs, options, enabled, next_run =
    ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], ARGV[i + 6], ARGV[i + 7]
  local key = prefix .. name
  local source = (mode == 'sync') and 'config' or nil
  if redis.call('EXISTS', key) == 0 then
    redis.call('HSET', key, 'task', task, 'schedule', sched, 'args', args, 'kwargs', kwargs,
               'options', options, 'enabled', enabled, 'source', source or ARGV[i + 8],
               'next_run', next_run, 'total_run_count', '0')
    redis.call('SADD', names, name)
    if enabled == '1' then redis.call('ZADD', due, next_run, name) end
  else
    if mode == 'put' then return 0 end
    if redis.call('HGET', key, 'schedule') ~= sched then
      redis.call('HSET', key, 'schedule', sched, 'next_run', next_run)
      if redis.call('HGET', key, 'enabled') == '1' then redis.call('ZADD', due, next_run, name) end
    end
    redis.call('HSET', key, 'task', task, 'args', args, 'kwargs', kwargs, 'options', options)
    if source then redis.call('HSET', key, 'source', source) end
  end
end
return 1

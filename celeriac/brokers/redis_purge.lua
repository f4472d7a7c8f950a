-- purge: delete every ready and delayed message of a queue (leased ones stay).
--
-- ARGV: [1] layout, [2] queue.  Returns how many messages were deleted.

local queue = ARGV[2]
local n = 0
for _, step in ipairs(C.steps) do
  local key = step_key(queue, step)
  n = n + redis.call('LLEN', key)
  redis.call('DEL', key)
end
local dkey = C.delayed_prefix .. queue
local members = redis.call('ZRANGE', dkey, 0, -1)
for i = 1, #members, 500 do
  redis.call('ZREM', C.delayed, unpack(members, i, math.min(i + 499, #members)))
end
redis.call('DEL', dkey, C.bell_prefix .. queue)
return n + #members

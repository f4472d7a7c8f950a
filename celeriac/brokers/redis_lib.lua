-- celeriac Redis broker: helpers prepended to every redis_*.lua script.
--
-- Every script receives the layout as its first argument, ARGV[1] = a JSON
-- object ``C`` (built once by RedisBroker._layout): full key names of the
-- shared structures, key-name prefixes of the per-queue / per-consumer ones,
-- the global key prefix, the priority separator and steps.  Key names are
-- therefore computed here, which is fine on a single Redis server or
-- Sentinel-managed master (not on Redis Cluster, like kombu's own layout).
-- The usual layout (default separator, steps and names) comes as "~" followed by
-- the key prefix instead: the same table, built here without decoding JSON on
-- every call (the fetch script runs once per batch, this saves a fifth of it).

local C
if string.byte(ARGV[1], 1) == 126 then
  local p = string.sub(ARGV[1], 2)
  C = {prefix = p, sep = '\6\22', steps = {0, 3, 6, 9},
       unacked = p .. 'unacked', unacked_index = p .. 'unacked_index',
       leases = p .. 'celeriac.leases', lease = p .. 'celeriac.lease',
       started = p .. 'celeriac.started', consumer_prefix = p .. 'celeriac.consumer.',
       wake_prefix = p .. 'celeriac.wake.', idle_prefix = p .. 'celeriac.idle.',
       idle_of = p .. 'celeriac.idle_of',
       delayed = p .. 'celeriac.delayed', delayed_prefix = p .. 'celeriac.delayed.',
       bell_prefix = p .. 'celeriac.bell.', binding_prefix = p .. '_kombu.binding.',
       dead_letters = p .. 'celeriac.dead_letters', dead_cap = 10000, seq = p .. 'celeriac.seq'}
else
  C = cjson.decode(ARGV[1])
end

if redis.replicate_commands then
  pcall(redis.replicate_commands)  -- Redis < 5: allow TIME before writes
end

local function server_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

-- The list key of ``queue`` for a priority step (step 0 has no suffix).
local function step_key(queue, step)
  step = tonumber(step) or 0
  if step == 0 then
    return C.prefix .. queue
  end
  return C.prefix .. queue .. C.sep .. (step % 1 == 0 and step or string.format('%d', step))
end

-- kombu's rule: clamp to 0..9, then the largest step <= priority.
local function step_for(priority)
  local p = tonumber(priority) or 0
  if p < 0 then p = 0 elseif p > 9 then p = 9 end
  local chosen = C.steps[1]
  for _, s in ipairs(C.steps) do
    if s <= p then chosen = s end
  end
  return chosen
end

-- Wake one waiting consumer of ``queue`` (the doorbell holds at most one token).
local function ring(queue)
  local bell = C.bell_prefix .. queue
  redis.call('LPUSH', bell, '1')
  redis.call('LTRIM', bell, 0, 0)
end

-- ---------------------------------------------------------------------------
-- A minimal JSON scanner, so that a stored envelope can be marked redelivered
-- by splicing text instead of decoding and re-encoding it (cjson would change
-- number formatting and turn empty arrays into objects).

local function skip_string(s, i)          -- s[i] == '"'; index after the closing quote
  local j = i + 1
  while true do
    local k = string.find(s, '["\\]', j)
    if not k then return nil end
    if string.byte(s, k) == 92 then j = k + 2 else return k + 1 end
  end
end

local function skip_value(s, i)           -- index just after the value starting at s[i]
  local c = string.byte(s, i)
  if c == 34 then return skip_string(s, i) end
  if c == 123 or c == 91 then
    local depth, j = 0, i
    while true do
      local k = string.find(s, '[%[%]{}"]', j)
      if not k then return nil end
      local ch = string.byte(s, k)
      if ch == 34 then
        j = skip_string(s, k)
        if not j then return nil end
      else
        if ch == 123 or ch == 91 then depth = depth + 1 else depth = depth - 1 end
        j = k + 1
        if depth == 0 then return j end
      end
    end
  end
  return string.find(s, '[,}%]%s]', i) or (#s + 1)
end

-- The value span [vstart, vend) of member ``key`` of the object at s[o] == '{'.
local function find_member(s, o, key)
  local j = o + 1
  while true do
    j = string.find(s, '[^%s,]', j)
    if not j or string.byte(s, j) ~= 34 then return nil end
    local kend = skip_string(s, j)
    if not kend then return nil end
    local colon = string.find(s, ':', kend, true)
    if not colon then return nil end
    local vstart = string.find(s, '[^%s]', colon + 1)
    if not vstart then return nil end
    local vend = skip_value(s, vstart)
    if not vend then return nil end
    if string.sub(s, j + 1, kend - 2) == key then return vstart, vend end
    j = vend
  end
end

-- Set member ``key`` of the object at s[o] to true (replace or append).
local function set_true(s, o, key)
  local vs, ve = find_member(s, o, key)
  if vs then
    return string.sub(s, 1, vs - 1) .. 'true' .. string.sub(s, ve)
  end
  local after = skip_value(s, o)
  if not after then return s end
  local close = after - 1
  local first = string.find(s, '[^%s]', o + 1)
  local entry = '"' .. key .. '": true'
  if first ~= close then entry = ', ' .. entry end
  return string.sub(s, 1, close - 1) .. entry .. string.sub(s, close)
end

-- headers.redelivered = true and properties.delivery_info.redelivered = true,
-- as kombu's restore does; the text is returned unchanged if it is not an object.
local function mark_redelivered(env)
  local o = string.find(env, '[^%s]')
  if not o or string.byte(env, o) ~= 123 then return env end
  local s = env
  local hs = find_member(s, o, 'headers')
  if hs and string.byte(s, hs) == 123 then s = set_true(s, hs, 'redelivered') end
  local ps = find_member(s, o, 'properties')
  if ps and string.byte(s, ps) == 123 then
    local ds = find_member(s, ps, 'delivery_info')
    if ds and string.byte(s, ds) == 123 then s = set_true(s, ds, 'redelivered') end
  end
  return s
end

-- ---------------------------------------------------------------------------
-- Leases.

-- A lease record's value "<consumer>\n<queue>" -> consumer, queue (either may be nil).
local function split_lease(v)
  if not v then return nil, nil end
  local i = string.find(v, '\n', 1, true)
  if not i then return v, nil end
  return string.sub(v, 1, i - 1), string.sub(v, i + 1)
end

-- ``cmd key <items...>`` in chunks (a Lua call takes a few thousand arguments at most).
local function variadic(cmd, key, items)
  for i = 1, #items, 1000 do
    redis.call(cmd, key, unpack(items, i, math.min(i + 999, #items)))
  end
end

-- Drop our lease records of ``tag``; returns its queue (or nil).
local function drop_lease(tag)
  local owner, queue = split_lease(redis.call('HGET', C.lease, tag))
  redis.call('ZREM', C.leases, tag)
  redis.call('HDEL', C.lease, tag)
  if owner then redis.call('SREM', C.consumer_prefix .. owner, tag) end
  return queue
end

-- Store a message nobody can parse in the dead-letter list (never drop it).
local function bury(raw, queue, reason, now)
  local id = 'x' .. redis.call('INCR', C.seq)
  local entry = cjson.encode({dead_id = id, reason = reason, queue = queue, task = cjson.null,
                              id = cjson.null, failed_at = now, envelope = raw})
  redis.call('LPUSH', C.dead_letters, entry)
  redis.call('LTRIM', C.dead_letters, 0, C.dead_cap - 1)
end

-- The queues a message published to (exchange, routing key) goes to: the
-- routing key itself for the anonymous exchange, else the direct bindings in
-- kombu's binding set "<routing key> SEP <pattern> SEP <queue>".
local function route(exchange, routing_key)
  if type(exchange) ~= 'string' or exchange == '' then
    if type(routing_key) == 'string' and routing_key ~= '' then return {routing_key} end
    return {}
  end
  local out = {}
  for _, m in ipairs(redis.call('SMEMBERS', C.binding_prefix .. exchange)) do
    local a = string.find(m, C.sep, 1, true)
    local b = a and string.find(m, C.sep, a + #C.sep, true)
    if b and string.sub(m, 1, a - 1) == routing_key and b == a + #C.sep then
      out[#out + 1] = string.sub(m, b + #C.sep)
    end
  end
  return out
end

-- Give a message back from kombu's unacked hash: RPUSH it (consumed next, as
-- kombu's restore does) marked redelivered, to the queue it was leased from
-- (ours) or where its exchange and routing key lead (a Celery worker's).  If
-- the hash entry is gone, someone else (a Celery worker's visibility-timeout
-- restore) already put it back, so only our lease records are dropped.
-- Like every move here, the new copy is written before the old one is
-- deleted: a failing command aborts the script with the message still in place.
-- Returns 1 or 0.
local function restore(tag, now)
  local stored = redis.call('HGET', C.unacked, tag)
  local _, queue = split_lease(redis.call('HGET', C.lease, tag))
  local pushed = 0
  if stored then
    local i = string.find(stored, '[^%s]', 2)
    local e = i and skip_value(stored, i)
    local ok, data = pcall(cjson.decode, stored)
    local targets = {}
    if e and ok and type(data) == 'table' then
      targets = queue and {queue} or route(data[2], data[3])
    end
    if #targets == 0 then
      bury(stored, queue or '', 'cannot restore this entry of the unacked hash', now)
    else
      local priority = 0
      if type(data[1]) == 'table' and type(data[1].properties) == 'table' then
        priority = data[1].properties.priority
      end
      local env = mark_redelivered(string.sub(stored, i, e - 1))
      for _, q in ipairs(targets) do
        redis.call('RPUSH', step_key(q, step_for(priority)), env)
        ring(q)
      end
      pushed = 1
    end
  end
  drop_lease(tag)
  redis.call('HDEL', C.unacked, tag)
  redis.call('ZREM', C.unacked_index, tag)
  return pushed
end

-- Forget messages for good (ack): kombu's entries and our lease records, a few
-- variadic commands for the whole list of tags.
local function forget_many(tags)
  if #tags == 0 then return end
  local by_owner = {}
  for i = 1, #tags, 1000 do
    local part = {unpack(tags, i, math.min(i + 999, #tags))}
    local values = redis.call('HMGET', C.lease, unpack(part))
    for j = 1, #part do
      local owner = split_lease(values[j])
      if owner then
        local ts = by_owner[owner]
        if not ts then ts = {}; by_owner[owner] = ts end
        ts[#ts + 1] = part[j]
      end
    end
  end
  for owner, ts in pairs(by_owner) do variadic('SREM', C.consumer_prefix .. owner, ts) end
  variadic('ZREM', C.leases, tags)
  variadic('HDEL', C.lease, tags)
  variadic('HDEL', C.unacked, tags)
  variadic('ZREM', C.unacked_index, tags)
  variadic('SREM', C.started, tags)
end

local function forget(tag)
  forget_many({tag})
end

-- fetch: settle the previous batch (store its results, ack its messages), promote
-- due delayed messages, give back expired leases (when asked), then pop up to N
-- messages and lease them, all in one atomic step: a worker's one round trip per batch.
--
-- ARGV: [1] layout, [2] consumer id, [3] max count, [4] lease seconds,
--       [5] '1' to reclaim expired leases, [6] kombu's visibility timeout
--       (seconds), [7] this consumer's wake-up list ('' none), [8] seconds it will
--       block on it, [9] number of queues Q, [10..9+Q] queue names,
--       then the settlement of the previous batch (may be empty):
--       A, A delivery tags to ack,
--       then results to store first (only when the result backend is this server
--       and database): the result TTL in ms ('0' none), then (key, status, meta) triples.
-- Returns {server_now, next_due_or_'', tag, queue_index, envelope, started, ...}.
-- The caller may send "BRPOP <wake list> <queue doorbells> <block>" right behind this
-- script (one round trip): a token is pushed on its wake list when it has messages to
-- work on, or when a delayed message is due before the block would end, so that BRPOP
-- returns at once; otherwise it sleeps until a producer rings a doorbell.

local consumer = ARGV[2]
local max_count = tonumber(ARGV[3])
local lease_seconds = tonumber(ARGV[4])
local reclaim = ARGV[5] == '1'
local queues = {}
local visibility_timeout = tonumber(ARGV[6])
local wake = ARGV[7]
local block = tonumber(ARGV[8]) or 0
local nq = tonumber(ARGV[9])
for i = 10, 9 + nq do queues[#queues + 1] = ARGV[i] end
local na = tonumber(ARGV[10 + nq]) or 0
local at = 11 + nq + na             -- where the results start

-- 0. Settle: results first (as the result backend's redis_store.lua does: never
--    replacing a SUCCESS, and PUBLISH on each key), then the acks.  A worker that
--    dies in between re-runs the task rather than losing its result; inside one
--    script nothing comes in between anyway.
if #ARGV > at then
  local rkeys, rargs = {}, {ARGV[at]}
  for i = at + 1, #ARGV, 3 do
    rkeys[#rkeys + 1] = ARGV[i]
    rargs[#rargs + 1] = ARGV[i + 1]
    rargs[#rargs + 1] = ARGV[i + 2]
  end
  store_results(rkeys, rargs)
end
if na > 0 then
  local acked = {}
  for i = 11 + nq, 10 + nq + na do acked[#acked + 1] = ARGV[i] end
  forget_many(acked)
end

local now = server_now()

-- 1. Delayed messages that are due go to the back of their list, as if
--    published now.  Member: "<step>|<byte length of queue>|<queue><envelope>".
local first = redis.call('ZRANGE', C.delayed, 0, 0, 'WITHSCORES')
local due = {}
if first[2] and tonumber(first[2]) <= now then
  due = redis.call('ZRANGEBYSCORE', C.delayed, '-inf', now, 'LIMIT', 0, 1000)
  first = nil                       -- read again in step 5
end
for _, m in ipairs(due) do
  local a = string.find(m, '|', 1, true)
  local b = a and string.find(m, '|', a + 1, true)
  local n = b and tonumber(string.sub(m, a + 1, b - 1))
  if n then
    local queue = string.sub(m, b + 1, b + n)
    redis.call('LPUSH', step_key(queue, string.sub(m, 1, a - 1)), string.sub(m, b + n + 1))
    redis.call('ZREM', C.delayed_prefix .. queue, m)
    ring(queue)
  else
    bury(m, '', 'unreadable entry in the delayed set', now)
  end
  redis.call('ZREM', C.delayed, m)
end

-- 2. Leases that expired (their holder stopped heartbeating) are given back.
--    So are messages a Celery worker took and abandoned more than the
--    visibility timeout ago (kombu's own sweep, for mixed fleets); ours are
--    skipped there, their leases decide (heartbeats keep their index fresh).
if reclaim then
  local expired = redis.call('ZRANGEBYSCORE', C.leases, '-inf', now, 'LIMIT', 0, 1000)
  for _, tag in ipairs(expired) do restore(tag, now) end
  local stale = redis.call('ZRANGEBYSCORE', C.unacked_index, '-inf', now - visibility_timeout,
                           'LIMIT', 0, 100)
  for _, tag in ipairs(stale) do
    if not redis.call('ZSCORE', C.leases, tag) then restore(tag, now) end
  end
end

-- 3. Take in Celery's BRPOP key order (every step-0 key first): read the oldest
--    messages of each list (LRANGE from the tail), record them in kombu's unacked
--    hash/index and in our lease structures (a few variadic commands for the whole
--    batch), and only then trim them off their lists, so that a failing command can
--    never lose one.
local out = {tostring(now), ''}
local count = 0
local expiry = now + lease_seconds
local ckey = C.consumer_prefix .. consumer
local taken = {}       -- {tag, stored value, raw, queue index} per leased message
local trims = {}       -- {list key, how many messages to trim off its tail}
local seen = 0         -- messages read off the lists (leased, or buried when unreadable)

local function lease(raw, qi)
  local queue = queues[qi]
  local tag, exchange, routing_key     -- the last two as JSON text
  -- Envelopes from our producers and from kombu end with ..."delivery_tag": "<tag>"}}
  -- and carry their delivery_info just before: read both there, without decoding the
  -- whole envelope.  Anything else (escapes, another layout) is decoded in full; the
  -- worker decodes every envelope anyway and buries what it cannot read.
  -- (plain finds, not patterns: a pattern is tried at every offset, several times slower)
  local n = #raw
  local a = string.find(raw, '"delivery_tag": "', n > 120 and n - 120 or 1, true)
  if a and string.sub(raw, -3) == '"}}' then
    local t = string.sub(raw, a + 17, n - 3)
    local i = string.find(raw, '"delivery_info": {"exchange": "', n > 600 and n - 600 or 1, true)
    if i and not string.find(t, '["\\]') then
      local e1 = i + 31                                   -- first byte of the exchange
      local e2 = string.find(raw, '", "routing_key": "', e1, true)
      local r2 = e2 and string.find(raw, '"}', e2 + 19, true)
      if r2 and r2 < a then
        local ex, rk = string.sub(raw, e1, e2 - 1), string.sub(raw, e2 + 19, r2 - 1)
        if not string.find(ex, '["\\]') and not string.find(rk, '["\\]') then
          tag, exchange, routing_key = t, '"' .. ex .. '"', '"' .. rk .. '"'
        end
      end
    end
  end
  if not tag then
    local ok, env = pcall(cjson.decode, raw)
    if not ok or type(env) ~= 'table' or type(env.properties) ~= 'table' then
      bury(raw, queue, 'DecodeError: not a kombu JSON envelope', now)
      return
    end
    local props = env.properties
    tag = props.delivery_tag
    exchange, routing_key = '', queue
    local info = props.delivery_info
    if type(info) == 'table' then
      if type(info.exchange) == 'string' then exchange = info.exchange end
      if type(info.routing_key) == 'string' then routing_key = info.routing_key end
    end
    exchange, routing_key = cjson.encode(exchange), cjson.encode(routing_key)
  end
  if type(tag) ~= 'string' or tag == '' then tag = false end
  taken[#taken + 1] = {tag, '[' .. raw .. ', ' .. exchange .. ', ' .. routing_key .. ']', raw, qi}
end

-- Messages handed to this consumer by publishers while it was registered idle
-- (redis_publish.lua) that its BRPOP did not return (it timed out first, or woke on a
-- doorbell): already leased to it; taken first, or given back when it cannot take them
-- (no room, or it no longer consumes their queue).  Anything else there is a stale token.
local wkey = C.wake_prefix .. consumer
local handed = redis.call('LRANGE', wkey, 0, -1)
if #handed > 0 then
  redis.call('DEL', wkey)
  for i = #handed, 1, -1 do                       -- LPUSHed: the oldest is last
    local h = handed[i]
    local a = string.byte(h, 1) == 104 and string.find(h, '\n', 2, true)
    local b = a and string.find(h, '\n', a + 1, true)
    if b then
      local tag, queue = string.sub(h, 2, a - 1), string.sub(h, a + 1, b - 1)
      if split_lease(redis.call('HGET', C.lease, tag)) == consumer then
        local qi
        for j = 1, #queues do if queues[j] == queue then qi = j end end
        if qi and count < max_count then
          count = count + 1
          out[#out + 1] = tag
          out[#out + 1] = qi
          out[#out + 1] = string.sub(h, b + 1)
          out[#out + 1] = redis.call('SISMEMBER', C.started, tag)
        else
          restore(tag, now)
        end
      end
    end
  end
end

local keys = {}
for _, step in ipairs(C.steps) do
  for qi = 1, #queues do keys[#keys + 1] = step_key(queues[qi], step) end
end
-- one EXISTS first: a consumer that just finished a batch mostly finds nothing
local base = count    -- handed messages taken above
if max_count > base and #keys > 0 and redis.call('EXISTS', unpack(keys)) > 0 then
  for si = 1, #C.steps do
    for qi = 1, #queues do
      if seen + base >= max_count then break end
      local key = keys[(si - 1) * #queues + qi]
      local msgs = redis.call('LRANGE', key, seen + base - max_count, -1)
      for i = #msgs, 1, -1 do lease(msgs[i], qi) end     -- the tail first: oldest first
      if #msgs > 0 then
        trims[#trims + 1] = {key, #msgs}
        seen = seen + #msgs
      end
    end
  end
end
if #taken > 0 then
  -- a tag that is missing, or already used by a message still unacked (or earlier in
  -- this batch), gets one made up
  local named = {}
  for _, t in ipairs(taken) do if t[1] then named[#named + 1] = t[1] end end
  local held = #named > 0 and redis.call('HMGET', C.unacked, unpack(named)) or {}
  local used, k = {}, 0
  for _, t in ipairs(taken) do
    if t[1] then
      k = k + 1
      if held[k] or used[t[1]] then t[1] = t[1] .. '~' .. redis.call('INCR', C.seq) end
    else
      t[1] = 'celeriac~' .. redis.call('INCR', C.seq)
    end
    used[t[1]] = true
  end
  local hu, hi, hl, hw, tags = {}, {}, {}, {}, {}
  for _, t in ipairs(taken) do
    local tag = t[1]
    tags[#tags + 1] = tag
    hu[#hu + 1] = tag; hu[#hu + 1] = t[2]
    hi[#hi + 1] = now; hi[#hi + 1] = tag
    hl[#hl + 1] = expiry; hl[#hl + 1] = tag
    hw[#hw + 1] = tag; hw[#hw + 1] = consumer .. '\n' .. queues[t[4]]
  end
  variadic('HSET', C.unacked, hu)
  variadic('ZADD', C.unacked_index, hi)
  variadic('ZADD', C.leases, hl)
  variadic('HSET', C.lease, hw)
  variadic('SADD', ckey, tags)
  local any_started = redis.call('EXISTS', C.started) == 1
  for _, t in ipairs(taken) do
    count = count + 1
    out[#out + 1] = t[1]
    out[#out + 1] = t[4]
    out[#out + 1] = t[3]
    out[#out + 1] = any_started and redis.call('SISMEMBER', C.started, t[1]) or 0
  end
end
for _, tr in ipairs(trims) do redis.call('LTRIM', tr[1], 0, -1 - tr[2]) end

-- 4. Doorbells: a drained queue's token is stale, so drop it; a queue with
--    messages left keeps one token so that the next waiting consumer wakes.
for qi = 1, #queues do
  local left = 0
  if seen + base >= max_count then
    local qkeys = {}
    for si = 1, #C.steps do qkeys[si] = keys[(si - 1) * #queues + qi] end
    left = redis.call('EXISTS', unpack(qkeys))
  end
  if left == 0 then
    redis.call('DEL', C.bell_prefix .. queues[qi])
  elseif redis.call('LLEN', C.bell_prefix .. queues[qi]) == 0 then
    ring(queues[qi])
  end
end

-- 5. When the next delayed message is due, so an idle consumer can wait until then.
if first == nil then first = redis.call('ZRANGE', C.delayed, 0, 0, 'WITHSCORES') end
if first[2] then out[2] = first[2] end

-- 6. Wake the caller's BRPOP at once when it has work, or must look again soon.
local woken = wake ~= '' and (count > 0 or (first[2] and tonumber(first[2]) - now < block))
if woken then
  redis.call('LPUSH', wake, '1')
  redis.call('PEXPIRE', wake, 60000)
end

-- 7. A consumer of one queue that found nothing and will now block on its wake list
--    registers as idle until shortly after that block ends, so that the next publish to
--    the queue hands it the message directly (redis_publish.lua); otherwise it is not idle.
--    (Consumers of several queues do not register: one message would be handed per queue.)
if #queues == 1 then
  local ikey = C.idle_prefix .. queues[1]
  if wake ~= '' and not woken and max_count > 0 then
    redis.call('ZADD', ikey, now + block + 1, consumer)
    redis.call('HSET', C.idle_of, consumer, queues[1] .. '\n' .. ARGV[4])  -- its lease length
  else
    redis.call('ZREM', ikey, consumer)
  end
end
return out

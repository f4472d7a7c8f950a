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
for i = 11 + nq, 10 + nq + na do forget(ARGV[i]) end

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

-- 3. Take in Celery's BRPOP key order (every step-0 key first): record each
--    message in kombu's unacked hash/index and in our lease structures, and
--    only then pop it, so that a failing command can never lose it.
local out = {tostring(now), ''}
local count = 0
local expiry = now + lease_seconds
local ckey = C.consumer_prefix .. consumer

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
  if type(tag) ~= 'string' or tag == '' or redis.call('HEXISTS', C.unacked, tag) == 1 then
    -- missing, or already used by a message that is still unacked: make one up
    tag = (type(tag) == 'string' and tag or 'celeriac') .. '~' .. redis.call('INCR', C.seq)
  end
  redis.call('HSET', C.unacked, tag, '[' .. raw .. ', ' .. exchange .. ', ' .. routing_key .. ']')
  redis.call('ZADD', C.unacked_index, now, tag)
  redis.call('ZADD', C.leases, expiry, tag)
  redis.call('HSET', C.lease_owner, tag, consumer)
  redis.call('HSET', C.lease_queue, tag, queue)
  redis.call('SADD', ckey, tag)
  redis.call('SADD', C.leased_prefix .. queue, tag)
  count = count + 1
  out[#out + 1] = tag
  out[#out + 1] = qi
  out[#out + 1] = raw
  out[#out + 1] = redis.call('SISMEMBER', C.started, tag)
end

local keys = {}
for _, step in ipairs(C.steps) do
  for qi = 1, #queues do keys[#keys + 1] = step_key(queues[qi], step) end
end
-- one EXISTS first: a consumer that just finished a batch mostly finds nothing
if max_count > 0 and #keys > 0 and redis.call('EXISTS', unpack(keys)) > 0 then
  for si = 1, #C.steps do
    for qi = 1, #queues do
      if count >= max_count then break end
      local key = keys[(si - 1) * #queues + qi]
      while count < max_count do
        local raw = redis.call('LINDEX', key, -1)
        if not raw then break end
        lease(raw, qi)
        redis.call('RPOP', key)
      end
    end
  end
end

-- 4. Doorbells: a drained queue's token is stale, so drop it; a queue with
--    messages left keeps one token so that the next waiting consumer wakes.
for qi = 1, #queues do
  local left = 0
  if count >= max_count then
    for _, step in ipairs(C.steps) do
      left = left + redis.call('LLEN', step_key(queues[qi], step))
    end
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
if wake ~= '' and (count > 0 or (first[2] and tonumber(first[2]) - now < block)) then
  redis.call('LPUSH', wake, '1')
  redis.call('PEXPIRE', wake, 60000)
end
return out

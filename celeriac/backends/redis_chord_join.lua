-- Count one finished chord header task; claim the body for the call that completes the
-- chord (Celery 5.7's join, celery-wire 3.7; the keys are shared with Celery workers).
--   KEYS  1 <gk>.j  zset of members, score = group_index
--         2 <gk>.d  set "<task_id>:<group_index>" already counted (dedupe)
--         3 <gk>.c  claim: a token while the body is being sent, "done" after cleanup
--         4 <gk>.t  "total diff" (Task.add_to_chord), usually absent
--         5 <gk>.s  chord size (set before the header is sent)
--         6 <gk>    celery-taskset-meta-<gid>
--   ARGV  1 member: the encoded [1, task_id, state, result]
--         2 score: group_index, or "+inf"
--         3 dedupe member "<task_id>:<group_index>"
--         4 TTL in seconds for .j .d .t .s and the group meta, "0" = none
--         5 claim token          6 claim TTL in seconds
-- Returns the .j members in index order to the call that completed the chord and won
-- the claim, else nil.
local claim = redis.call('GET', KEYS[3])
if claim == 'done' then
    return nil
end
if redis.call('SISMEMBER', KEYS[2], ARGV[3]) == 0 then
    redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
    redis.call('SADD', KEYS[2], ARGV[3])
end
local ready = redis.call('ZCARD', KEYS[1])
local ttl = tonumber(ARGV[4])
if ttl > 0 then
    for _, i in ipairs({1, 2, 4, 5, 6}) do
        redis.call('EXPIRE', KEYS[i], ttl)
    end
end
local size = tonumber(redis.call('GET', KEYS[5]) or '')
if not size then
    return nil
end
local total = size + (tonumber(redis.call('GET', KEYS[4]) or '0') or 0)
if ready < total or claim then
    return nil
end
if not redis.call('SET', KEYS[3], ARGV[5], 'NX', 'EX', ARGV[6]) then
    return nil
end
return redis.call('ZRANGE', KEYS[1], 0, -1)

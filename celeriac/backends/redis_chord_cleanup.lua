-- After the body is sent: forget the chord and mark it done, if the caller still holds
-- the claim (celery-wire 3.7).
--   KEYS  1 <gk>.c   2 <gk>.j   3 <gk>.t   4 <gk>.s   5 <gk>.d
--   ARGV  1 claim token   2 seconds to keep the "done" mark
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return 0
end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5])
redis.call('SET', KEYS[1], 'done', 'EX', ARGV[2])
return 1

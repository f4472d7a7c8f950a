-- replay: move one dead letter back onto its queue, if it is still there.
--
-- ARGV: [1] layout, [2] the dead-letter list element, [3] queue, [4] list key,
--       [5] envelope to push.  Returns 1 if replayed, 0 if it was gone.

if not redis.call('LPOS', C.dead_letters, ARGV[2]) then
  return 0
end
redis.call('LPUSH', ARGV[4], ARGV[5])
redis.call('LREM', C.dead_letters, 1, ARGV[2])
ring(ARGV[3])
return 1

-- Queue dead letters again from their first attempt.
-- KEYS: dead, ready   ARGV: job prefix, ids...
local replayed = 0
for i = 2, #ARGV do
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
    redis.call('HSET', ARGV[1] .. ARGV[i], 'attempt', 0, 'lapses', 0, 'error', '', 'failed_at', '')
    redis.call('ZADD', KEYS[2], ms(now), ARGV[i])
    replayed = replayed + 1
  end
end
return replayed

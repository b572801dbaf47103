-- Say which jobs of a batch a worker has started: '-' for none of them yet, or its token
-- for the one it is about to run, so that a lapse counts only against that one.
-- KEYS: (none)   ARGV: token, job prefix, mark, ids...
for i = 4, #ARGV do
  local job = ARGV[2] .. ARGV[i]
  if redis.call('HGET', job, 'lease') == ARGV[1] then
    redis.call('HSET', job, 'started', ARGV[3])
  end
end
return 0

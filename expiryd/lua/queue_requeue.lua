-- Hand out again the jobs whose worker's lease lapsed. A lapse counts against a job the
-- worker may have been running when it died: any job of a batch it did not mark, and of
-- a batch it marked ('-' for waiting, its token once running), only the one it ran.
-- KEYS: leases, ready   ARGV: job prefix, limit
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ms(now), 'LIMIT', 0, ARGV[2])
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  local job = ARGV[1] .. id
  if redis.call('EXISTS', job) == 1 then
    local lease, started = unpack(redis.call('HMGET', job, 'lease', 'started'))
    if not started or started == lease then
      redis.call('HINCRBY', job, 'lapses', 1)
    end
    redis.call('HSET', job, 'lease', '')
    redis.call('HDEL', job, 'started')
    redis.call('ZADD', KEYS[2], ms(now), id)
  end
end
return #ids

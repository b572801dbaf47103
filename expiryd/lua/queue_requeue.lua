-- Hand out again the jobs whose worker's lease lapsed; each counts the lapse.
-- KEYS: leases, ready   ARGV: job prefix, limit
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ms(now), 'LIMIT', 0, ARGV[2])
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  local job = ARGV[1] .. id
  if redis.call('EXISTS', job) == 1 then
    redis.call('HSET', job, 'lease', '')
    redis.call('HINCRBY', job, 'lapses', 1)
    redis.call('ZADD', KEYS[2], ms(now), id)
  end
end
return #ids

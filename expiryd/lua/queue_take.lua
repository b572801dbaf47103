-- Lease up to `limit` due jobs to one worker (its token) until now + lease_ms.
-- KEYS: ready, leases   ARGV: limit, lease_ms, token, job prefix
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ms(now), 'LIMIT', 0, ARGV[1])
local taken = {}
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  local job = ARGV[4] .. id
  if redis.call('EXISTS', job) == 1 then
    redis.call('ZADD', KEYS[2], ms(now + tonumber(ARGV[2])), id)
    redis.call('HSET', job, 'lease', ARGV[3])
    redis.call('HDEL', job, 'started')
    table.insert(taken, {id, redis.call('HGETALL', job)})
  end
end
return taken

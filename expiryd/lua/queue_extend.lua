-- Extend the lease of jobs a worker still holds (its heartbeat while a batch runs).
-- KEYS: leases   ARGV: token, job prefix, lease_ms, ids...
local extended = 0
for i = 4, #ARGV do
  if redis.call('HGET', ARGV[2] .. ARGV[i], 'lease') == ARGV[1] then
    redis.call('ZADD', KEYS[1], 'XX', ms(now + tonumber(ARGV[3])), ARGV[i])
    extended = extended + 1
  end
end
return extended

-- Record what became of jobs leased with a token: an attempt counts once its outcome is
-- recorded here ("defer" puts a job back for later without counting one). A job whose
-- lease passed to another worker is left to that worker.
-- KEYS: leases, ready, dead   ARGV: token, job prefix, then (id, action, delay_ms, error)...
local settled = 0
for i = 3, #ARGV, 4 do
  local id, action, delay, err = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3]
  local job = ARGV[2] .. id
  if redis.call('HGET', job, 'lease') == ARGV[1] then
    redis.call('ZREM', KEYS[1], id)
    settled = settled + 1
    if action == 'ack' then
      redis.call('DEL', job)
    elseif action == 'defer' then
      redis.call('HSET', job, 'lease', '', 'error', err)
      redis.call('ZADD', KEYS[2], ms(now + delay), id)
    else
      redis.call('HINCRBY', job, 'attempt', 1)
      redis.call('HSET', job, 'lease', '', 'error', err)
      if action == 'retry' then
        redis.call('ZADD', KEYS[2], ms(now + delay), id)
      else
        redis.call('HSET', job, 'failed_at', ms(now))
        redis.call('ZADD', KEYS[3], ms(now), id)
      end
    end
  end
end
return settled

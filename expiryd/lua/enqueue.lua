-- Queue an expiry as a job, once. `q` holds the ready set and the job prefix.
-- An expiry's id comes from its incarnation (key and deadline) when the deadline is
-- known, so the same expiry always has the same id; otherwise the caller's random id.
local function job_id(key, deadline, random_id)
  if deadline then
    return string.sub(redis.sha1hex(key .. '\0' .. ms(deadline)), 1, 32)
  end
  return random_id
end

local function enqueue(q, id, key, source, deadline, value)
  local job = q.job_prefix .. id
  if redis.call('EXISTS', job) == 1 then return 0 end
  redis.call('HSET', job, 'key', key, 'source', source, 'enqueued', ms(now), 'attempt', 0)
  if deadline then redis.call('HSET', job, 'deadline', ms(deadline)) end
  if value then redis.call('HSET', job, 'value', value) end
  redis.call('ZADD', q.ready, ms(now), id)
  return id
end

-- Queue an expiry as a job, once. `q` holds the ready set and the jobs hash.
-- An expiry's id comes from its incarnation (key and deadline) when the deadline is
-- known, so the same expiry always has the same id; otherwise the caller's random id.
local function job_id(key, deadline, random_id)
  if deadline then
    return string.sub(redis.sha1hex(key .. '\0' .. ms(deadline)), 1, 32)
  end
  return random_id
end

local function enqueue(q, id, key, source, deadline, value)
  if redis.call('HSETNX', q.jobs, id, new_job(key, source, deadline, value)) == 0 then
    return 0
  end
  redis.call('ZADD', q.ready, ms(now), id)
  return id
end

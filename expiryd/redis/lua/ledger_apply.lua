-- A window of keyspace events, applied in the order Redis published them.
-- KEYS: deadlines, gone, gone_deadlines, values, claimed, ready, jobs
-- ARGV: capture ('1'/'0'), max value bytes, keep claims ms, then the events:
--   'r', key                  record: the key got a TTL (expire, rename_to, ...)
--   'm', key                  record moved: the key arrived with its TTL (restore: the
--                             same incarnation, from another node), or its record is
--                             tried again (a slot being imported). Nothing when it is
--                             gone or has no TTL: its own events take care of that.
--   'f', key                  forget: the key left without expiring (del, persist, ...)
--   'c', key, fresh_ms, id    claim: the key expired. fresh_ms (or '') is when this daemon
--                             found a newer incarnation already over; id is a random id
--                             for an expiry whose deadline nobody recorded.
-- Returns {now, oversize values, one reply per event}: record 1 (recorded), 0 (no TTL),
-- -2 (already gone) or -3 (a slot this node does not serve, or imports: see
-- cluster_events); record moved 1, 0 or -3; forget 0; claim the job id, or 0 when it was
-- claimed before.
local deadlines, gone, gone_deadlines, values, claimed = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local q = {ready = KEYS[6], jobs = KEYS[7]}
local capture, max_value = ARGV[1] == '1', tonumber(ARGV[2])
-- Values are looked up only while some may be kept (captured, or left from a time they
-- were): two commands per event saved when capture_values is off.
local has_values = capture or redis.call('EXISTS', values) == 1
local oversize = 0
-- Keys whose record found a newer incarnation already over, earlier in this window: its
-- `expired` event is for that incarnation, whatever was claimed before it.
local over_when_recorded = {}

local function capture_value(key)
  if redis.call('TYPE', key)['ok'] == 'string' then
    if redis.call('STRLEN', key) <= max_value then
      redis.call('HSET', values, key, redis.call('GET', key))
      return
    end
    oversize = oversize + 1
  end
  redis.call('HDEL', values, key)
end

local function take_value(key)
  local value = redis.call('HGET', values, key)
  redis.call('HDEL', values, key)
  return value
end

local function record(key)
  over_when_recorded[key] = nil
  -- The deadline exactly as Redis keeps it: now + PTTL would drift with the time this
  -- script has run, giving one incarnation two deadlines.
  local at = expiretime_here(key)
  if at == nil then return -3 end
  if at >= 0 then
    redis.call('ZADD', deadlines, at, key)
    if capture then
      capture_value(key)
    elseif has_values then
      redis.call('HDEL', values, key)
    end
    return 1
  end
  -- No TTL, or already gone: the incarnation recorded before was replaced by this one.
  redis.call('ZREM', deadlines, key)
  if has_values then redis.call('HDEL', values, key) end
  if at == -1 then return 0 end
  over_when_recorded[key] = true
  return -2
end

local function record_moved(key)
  local at = expiretime_here(key)
  if at == nil then return -3 end
  if at == -2 then
    -- Gone before a deadline held here: that incarnation was replaced (RESTORE ...
    -- REPLACE), not expired, and must not be recovered at its deadline.
    local held = tonumber(redis.call('ZSCORE', deadlines, key))
    if held and held > now + 1 then redis.call('ZREM', deadlines, key) end
  end
  if at < 0 then return 0 end
  redis.call('ZADD', deadlines, at, key)
  if capture then capture_value(key) end
  return 1
end

local function forget(key)
  over_when_recorded[key] = nil
  redis.call('ZREM', deadlines, key)
  redis.call('ZREM', gone, key)
  redis.call('HDEL', gone_deadlines, key)
  if has_values then redis.call('HDEL', values, key) end
  return 0
end

-- Which incarnation an `expired` event is for: the recorded deadline if it has passed
-- (a later deadline belongs to a newer incarnation: the event is stale), else the one a
-- sweep found gone, else one nobody recorded, unless that was claimed already: a claim
-- made after this daemon found the incarnation over (`fresh`) is a claim of it.
local function claim(key, fresh, random_id)
  local deadline, source = tonumber(redis.call('ZSCORE', deadlines, key)), 'event'
  if deadline and deadline <= now + 1 then
    redis.call('ZREM', deadlines, key)
  else
    deadline = tonumber(redis.call('HGET', gone_deadlines, key))
    if deadline then
      source = 'nudge'
      redis.call('ZREM', gone, key)
      redis.call('HDEL', gone_deadlines, key)
    elseif over_when_recorded[key] then
      over_when_recorded[key] = nil
    else
      local last = tonumber(redis.call('ZSCORE', claimed, key))
      if last and (not fresh or last > fresh) then return 0 end
    end
  end
  local value = has_values and take_value(key)
  redis.call('ZADD', claimed, ms(now), key)
  return enqueue(q, job_id(key, deadline, random_id), key, source, deadline, value)
end

local replies = {now, 0}
local i = 4
while i <= #ARGV do
  local op, key = ARGV[i], ARGV[i + 1]
  if op == 'c' then
    table.insert(replies, claim(key, tonumber(ARGV[i + 2]), ARGV[i + 3]))
    i = i + 4
  else
    if op == 'r' then
      table.insert(replies, record(key))
    elseif op == 'm' then
      table.insert(replies, record_moved(key))
    else
      table.insert(replies, forget(key))
    end
    i = i + 2
  end
end
redis.call('ZREMRANGEBYSCORE', claimed, '-inf', ms(now - tonumber(ARGV[3])))
replies[2] = oversize
return replies

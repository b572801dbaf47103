-- Run when the listener receives this daemon's sweep marker: every `expired` and `del`
-- event published before it has been applied, so an incarnation still in `gone` then
-- expired while nobody listened, and is claimed as recovered. One that lives on with a
-- newer deadline was replaced, not expired, and is dropped.
-- KEYS: deadlines, gone, gone_deadlines, values, claimed, ready, jobs
-- ARGV: marker time (ms), limit
-- Only what was found before the marker's ms counts: another sweep in the same ms may
-- have found a key gone after a DEL whose event comes after this marker. Those wait
-- for the next marker.
local deadlines, gone, gone_deadlines, values, claimed = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local q = {ready = KEYS[6], jobs = KEYS[7]}
local keys = redis.call('ZRANGEBYSCORE', gone, '-inf', '(' .. ARGV[1], 'LIMIT', 0, ARGV[2])
local recovered = 0
for _, key in ipairs(keys) do
  local deadline = tonumber(redis.call('HGET', gone_deadlines, key))
  redis.call('ZREM', gone, key)
  redis.call('HDEL', gone_deadlines, key)
  -- Found gone here, so it did not move with its slot: one served elsewhere since is a
  -- new incarnation there, and this one is over.
  local exists = redis.pcall('EXISTS', key)
  if type(exists) == 'table' then exists = 0 end
  -- A claim of the key at or after this deadline is a claim of this incarnation: in a
  -- cluster, its new node claimed it before its deadline was handed over there.
  local last = tonumber(redis.call('ZSCORE', claimed, key))
  local claimed_since = deadline and last and last >= deadline
  if deadline and not claimed_since and not redis.call('ZSCORE', deadlines, key)
      and exists == 0 then
    local value = redis.call('HGET', values, key)
    redis.call('HDEL', values, key)
    redis.call('ZADD', claimed, ms(now), key)
    if enqueue(q, job_id(key, deadline), key, 'recovery', deadline, value) ~= 0 then
      recovered = recovered + 1
    end
  end
end
return {#keys, recovered}

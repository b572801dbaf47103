-- Lease up to `limit` due jobs to one worker (its token) until now + lease_ms, marked
-- as not started yet (see queue_mark.lua).
-- KEYS: ready, leases, jobs, owners   ARGV: limit, lease_ms, token
-- Returns the number of ids found without a record (dropped), then id, record, ...
local ready, leases, jobs, owners = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local ids = redis.call('ZRANGEBYSCORE', ready, '-inf', ms(now), 'LIMIT', 0, ARGV[1])
if #ids == 0 then return {0} end
call_many('ZREM', ready, ids)
local records = hmget_many(jobs, ids)
local until_ms = ms(now + tonumber(ARGV[2]))
local taken, leased, owned = {0}, {}, {}
for i, id in ipairs(ids) do
  if records[i] then
    table.insert(taken, id)
    table.insert(taken, records[i])
    table.insert(leased, until_ms)
    table.insert(leased, id)
    table.insert(owned, id)
    table.insert(owned, ARGV[3] .. ' -')
  else
    taken[1] = taken[1] + 1
  end
end
call_many('ZADD', leases, leased, 2)
call_many('HSET', owners, owned, 2)
return taken

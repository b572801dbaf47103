-- Hand out again the jobs whose worker's lease lapsed. A lapse counts against the jobs
-- the worker may have been running when it died: those it marked started ('+'), not
-- those leased and not started yet ('-').
-- KEYS: leases, ready, jobs, owners   ARGV: limit
-- Returns {jobs handed out again, ids found without a record (dropped)}.
local leases, ready, jobs, owners = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local ids = redis.call('ZRANGEBYSCORE', leases, '-inf', ms(now), 'LIMIT', 0, ARGV[1])
if #ids == 0 then return {0, 0} end
call_many('ZREM', leases, ids)
local held = hmget_many(owners, ids)
call_many('HDEL', owners, ids)
local records = hmget_many(jobs, ids)
local lapsed, again = {}, {}
for i, id in ipairs(ids) do
  if records[i] then
    local _, mark = owner(held[i])
    lapsed[i] = mark ~= '-'
    table.insert(again, ms(now))
    table.insert(again, id)
  end
end
update_jobs(jobs, ids, records, function(job, i)
  if lapsed[i] then job[LAPSES] = job[LAPSES] + 1 end
end)
call_many('ZADD', ready, again, 2)
return {#again / 2, #ids - #again / 2}

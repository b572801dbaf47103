-- Queue dead letters again from their first attempt.
-- KEYS: dead, ready, jobs   ARGV: ids...
local dead, ready, jobs = KEYS[1], KEYS[2], KEYS[3]
local scores = redis.call('ZMSCORE', dead, unpack(ARGV))
local ids, again = {}, {}
for i, id in ipairs(ARGV) do
  if scores[i] then
    table.insert(ids, id)
    table.insert(again, ms(now))
    table.insert(again, id)
  end
end
call_many('ZREM', dead, ids)
update_jobs(jobs, ids, hmget_many(jobs, ids), function(job)
  job[ATTEMPT], job[LAPSES], job[ERROR], job[FAILED] = 0, 0, '', false
end)
call_many('ZADD', ready, again, 2)
return #ids

-- Record what became of jobs leased with a token: an attempt counts once its outcome is
-- recorded here ("defer" puts a job back for later without counting one). A job whose
-- lease passed to another worker is left to that worker.
-- KEYS: leases, ready, dead, jobs, owners
-- ARGV: token, then (id, action, delay_ms, error)...
local leases, ready, dead, jobs, owners = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local ids, settlements = {}, {}
for i = 2, #ARGV, 4 do
  table.insert(ids, ARGV[i])
  table.insert(settlements, {action = ARGV[i + 1], delay = tonumber(ARGV[i + 2]), err = ARGV[i + 3]})
end
local held = hmget_many(owners, ids)
local ours, acked, changed, changes, again, failed = {}, {}, {}, {}, {}, {}
for i, id in ipairs(ids) do
  if owner(held[i]) == ARGV[1] then
    local s = settlements[i]
    table.insert(ours, id)
    if s.action == 'ack' then
      table.insert(acked, id)
    else
      table.insert(changed, id)
      table.insert(changes, s)
      if s.action == 'dead' then
        table.insert(failed, ms(now))
        table.insert(failed, id)
      else
        table.insert(again, ms(now + s.delay))
        table.insert(again, id)
      end
    end
  end
end
call_many('ZREM', leases, ours)
call_many('HDEL', owners, ours)
call_many('HDEL', jobs, acked)
update_jobs(jobs, changed, hmget_many(jobs, changed), function(job, i)
  local s = changes[i]
  if s.action ~= 'defer' or s.err ~= '' then job[ERROR] = s.err end
  if s.action ~= 'defer' then job[ATTEMPT] = job[ATTEMPT] + 1 end
  if s.action == 'dead' then job[FAILED] = now end
end)
call_many('ZADD', ready, again, 2)
call_many('ZADD', dead, failed, 2)
return #ours

-- A job is one field of the jobs HASH: its id -> a record packed with cmsgpack,
--   {key, source, enqueued_ms, deadline_ms or false, value or false, attempt, lapses,
--    error, failed_ms or false}
-- `attempt` counts the attempts whose outcome was recorded, `lapses` the leases that ran
-- out under a worker that died. Who holds a job's lease is kept beside it, in the owners
-- HASH: id -> the worker's token, followed by ' -' while the job is leased and not
-- started yet, and ' +' once the worker marked the group it runs it in.
local ATTEMPT, LAPSES, ERROR, FAILED = 6, 7, 8, 9

local function new_job(key, source, deadline, value)
  return cmsgpack.pack({key, source, now, deadline or false, value or false, 0, 0, '', false})
end

-- The token and mark ('' when the batch was not marked) of an owners entry.
local function owner(entry)
  if not entry then return false, '' end
  local token, mark = string.match(entry, '^(%S+) ?(.*)$')
  return token, mark
end

local function number_or_false(v) return v == false or type(v) == 'number' end

-- Whether an unpacked record has the layout above, field by field (the same test as
-- `Job.unpack` makes): only then may its fields be changed.
local function readable(job)
  return type(job) == 'table' and type(job[1]) == 'string' and type(job[2]) == 'string'
    and type(job[3]) == 'number' and number_or_false(job[4])
    and (job[5] == false or type(job[5]) == 'string')
    and type(job[ATTEMPT]) == 'number' and type(job[LAPSES]) == 'number'
    and type(job[ERROR]) == 'string' and number_or_false(job[FAILED]) and job[10] == nil
end

-- Change fields of packed records and write them back, in one HSET. A record that is
-- not one expiryd packed is left as it is (the worker dead-letters it as unreadable):
-- nothing here can raise halfway through a script that has already written.
local function update_jobs(jobs, ids, records, change)
  local changed = {}
  for i, id in ipairs(ids) do
    local ok, job = pcall(cmsgpack.unpack, records[i] or '')
    if ok and readable(job) then
      change(job, i)
      table.insert(changed, id)
      table.insert(changed, cmsgpack.pack(job))
    end
  end
  call_many('HSET', jobs, changed, 2)
end

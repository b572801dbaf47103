-- Say which jobs of a batch a worker is about to run: '+' for the group it starts now
-- ('-', not started, is how `take` leases them), so that a lapse counts only against
-- the jobs that may have been running.
-- KEYS: owners   ARGV: token, mark, ids...
local ids = {unpack(ARGV, 3)}
local held = hmget_many(KEYS[1], ids)
local marked = {}
for i, id in ipairs(ids) do
  if owner(held[i]) == ARGV[1] then
    table.insert(marked, id)
    table.insert(marked, ARGV[1] .. ' ' .. ARGV[2])
  end
end
call_many('HSET', KEYS[1], marked, 2)
return #marked / 2

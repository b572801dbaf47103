-- Extend the lease of jobs a worker still holds (its heartbeat while a batch runs).
-- KEYS: leases, owners   ARGV: token, lease_ms, ids...
local ids = {unpack(ARGV, 3)}
local held = hmget_many(KEYS[2], ids)
local until_ms, extended = ms(now + tonumber(ARGV[2])), {}
for i, id in ipairs(ids) do
  if owner(held[i]) == ARGV[1] then
    table.insert(extended, until_ms)
    table.insert(extended, id)
  end
end
if #extended > 0 then
  redis.call('ZADD', KEYS[1], 'XX', unpack(extended))
end
return #extended / 2

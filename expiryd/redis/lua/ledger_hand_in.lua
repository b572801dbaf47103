-- Take in entries handed over from another shard's ledger (see `Ledger.hand_over`).
-- KEYS: the set they go in (deadlines, or gone), its companion hash (values, or
-- gone_deadlines), claimed, gone.
-- ARGV: 'gone' or 'deadlines', then key, score, extra triples: for a deadline, its value
-- ('' for none); for an incarnation found gone, its deadline.
-- What this ledger knows of a key already wins: the key lives on this node now, and a
-- moved key's deadline here may differ from the old node's by a ms (MIGRATE carries
-- its TTL, not its deadline), which would give one expiry two ids. So an entry is not
-- taken in when this ledger has one for the key, found it gone, or claimed it at or
-- after the deadline (its expiry was heard here before the deadline was handed over).
-- Returns the number taken in.
local set, hash, claimed, gone_set = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local gone = ARGV[1] == 'gone'
local taken = 0
for i = 2, #ARGV, 3 do
  local key, score, extra = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local deadline = tonumber(gone and extra or score)
  local last = tonumber(redis.call('ZSCORE', claimed, key))
  local known = redis.call('ZSCORE', set, key) or redis.call('ZSCORE', gone_set, key)
  if not known and not (last and last >= deadline) then
    redis.call('ZADD', set, score, key)
    if extra ~= '' then redis.call('HSETNX', hash, key, extra) end
    taken = taken + 1
  end
end
return taken

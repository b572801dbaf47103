-- In a cluster, a key whose slot another node serves now (resharding moved it) cannot
-- be read by this node's scripts. `expiretime_here` gives nil for such a key and notes
-- it in `elsewhere`: the script leaves its entry as it is, and expiryd hands it over to
-- the ledger of the shard that serves it now.
local elsewhere = {}
local function expiretime_here(key)
  local at = redis.pcall('PEXPIRETIME', key)
  if type(at) == 'table' then
    table.insert(elsewhere, key)
    return nil
  end
  return at
end

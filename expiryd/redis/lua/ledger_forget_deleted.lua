-- After a gap in listening: forget every recorded incarnation whose key is gone (or has
-- lost its TTL) although its deadline is still ahead. It was deleted, persisted, renamed
-- or moved while nobody heard the event: it will never expire, and must not be taken
-- for an expiry at its deadline (nor an older incarnation of it still in `gone`). A
-- script sees the clock as it was when it started, and Redis expires no key before its
-- time, so a key gone here did not expire.
-- KEYS: deadlines, gone, gone_deadlines, values   ARGV: after (a deadline), limit
-- Looks at the deadlines past both `after` and now, `limit` of them and every other one
-- sharing the last one's ms, so that the next call can go on after that ms however the
-- ledger changes meanwhile.
-- Returns {incarnations looked at, incarnations forgotten, the last deadline looked at,
-- the keys served elsewhere now (see `here`)}.
local deadlines, gone, gone_deadlines, values = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local from = math.max(tonumber(ARGV[1]), now)
local ahead = redis.call('ZRANGEBYSCORE', deadlines, '(' .. ms(from), '+inf', 'WITHSCORES',
  'LIMIT', 0, ARGV[2])
local last = from
if #ahead > 0 then
  last = tonumber(ahead[#ahead])
  local ties = redis.call('ZRANGEBYSCORE', deadlines, ms(last), ms(last), 'WITHSCORES')
  for i = #ahead - 1, 1, -2 do  -- drop the page's own entries at `last`: `ties` has them
    if tonumber(ahead[i + 1]) ~= last then break end
    ahead[i], ahead[i + 1] = nil, nil
  end
  for _, item in ipairs(ties) do table.insert(ahead, item) end
end
local forgotten = 0
for i = 1, #ahead, 2 do
  local key = ahead[i]
  local at = expiretime_here(key)
  if at ~= nil and at < 0 then
    redis.call('ZREM', deadlines, key)
    redis.call('HDEL', values, key)
    redis.call('ZREM', gone, key)
    redis.call('HDEL', gone_deadlines, key)
    forgotten = forgotten + 1
  end
end
return {#ahead / 2, forgotten, ms(last), elsewhere}

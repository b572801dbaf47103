-- Look at every key whose deadline has passed: reading an expired key makes
-- Redis expire it and publish `expired` now (the nudge). A recorded incarnation that is
-- over (the key is gone, or lives on with a later deadline) moves to `gone`; a marker
-- published after the events this caused tells the listener when to reconcile.
-- KEYS: deadlines, gone, gone_deadlines, values   ARGV: limit, channel, marker prefix
-- Returns {keys looked at, keys moved to gone, the marker's time or 0 when none was sent,
-- the keys served elsewhere now (see `here`)}.
local deadlines, gone, gone_deadlines, values = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local due = redis.call('ZRANGEBYSCORE', deadlines, '-inf', ms(now), 'WITHSCORES', 'LIMIT', 0, ARGV[1])
local moved = 0
for i = 1, #due, 2 do
  local key, deadline = due[i], tonumber(due[i + 1])
  -- Reading the key (PEXPIRETIME) expires it if its time has come. A script sees the
  -- clock as it was when it started, so a key due by TIME may still live here: the same
  -- incarnation (the same deadline), which the next sweep finds gone.
  local at = expiretime_here(key)
  if at == nil or at == deadline then
    -- leave it
  elseif at == -1 then
    redis.call('ZREM', deadlines, key)
    redis.call('HDEL', values, key)
  else
    redis.call('ZADD', gone, ms(now), key)
    redis.call('HSET', gone_deadlines, key, ms(deadline))
    if at >= 0 then
      redis.call('ZADD', deadlines, at, key)
    else
      redis.call('ZREM', deadlines, key)
    end
    moved = moved + 1
  end
end
-- A key served elsewhere is handed over once the events before this marker are applied:
-- reading it here may have expired it here (in a slot being migrated away), and its
-- `expired` event needs its deadline in this ledger.
local marker = 0
if redis.call('ZCARD', gone) > 0 or #elsewhere > 0 then
  marker = ms(now)
  redis.call('PUBLISH', ARGV[2], ARGV[3] .. marker)
end
return {#due / 2, moved, marker, elsewhere}

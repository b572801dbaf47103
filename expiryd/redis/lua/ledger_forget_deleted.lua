-- After a gap in listening: forget every recorded incarnation whose key is gone (or has
-- lost its TTL) although its deadline is still ahead. It was deleted, persisted, renamed
-- or moved while nobody heard the event: it will never expire, and must not be taken
-- for an expiry at its deadline. A script sees the clock as it was when it started, and
-- Redis expires no key before its time, so a key gone here did not expire.
-- KEYS: deadlines, values   ARGV: offset, limit
-- Returns {incarnations looked at, incarnations forgotten}.
local deadlines, values = KEYS[1], KEYS[2]
local ahead = redis.call('ZRANGEBYSCORE', deadlines, '(' .. ms(now), '+inf', 'WITHSCORES',
  'LIMIT', ARGV[1], ARGV[2])
local forgotten = 0
for i = 1, #ahead, 2 do
  local key, deadline = ahead[i], tonumber(ahead[i + 1])
  local at = redis.call('PEXPIRETIME', key)
  if at < 0 and deadline > now then
    redis.call('ZREM', deadlines, key)
    redis.call('HDEL', values, key)
    forgotten = forgotten + 1
  end
end
return {#ahead / 2, forgotten}

-- Give a cluster primary the hash tag of its shard, unless another daemon gave it one
-- since this daemon read it.
-- KEYS: node id -> tag. ARGV: node id, the tag read ('' for none), the tag chosen.
-- Returns the primary's tag now.
local now = redis.call('HGET', KEYS[1], ARGV[1]) or ''
if now ~= ARGV[2] then return now end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return ARGV[3]

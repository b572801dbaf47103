"""The ledger: every watched key's deadline, kept in Redis so that expiryd, not Redis's
expiry sampling or a pub/sub connection, decides when an expiry is due and whether it
was seen.

How the pieces fit:
- `record` runs for every `expire`/`rename_to` event and for every key a SCAN finds: it
  stores the key's deadline (and, with capture_values, its value). `forget` runs for
  `del`, `persist` and `rename_from`.
- `sweep`, run every few milliseconds, reads the PTTL of each key whose deadline has
  passed. Reading an expired key makes Redis delete it and publish `expired` at once (the
  nudge). Keys found gone move to the `gone` set, and a marker is published on the
  sweep channel *after* any `expired` events the sweep caused, from inside the same script.
- An `expired` event `claim`s its key: the first claim wins and, in the same script,
  queues the expiry as a durable job (see `queue`), so no expiry is lost or queued twice.
- When the listener receives a marker, every `expired` event published before it has
  already been received. So whatever is still in `gone` then (up to the marker's time)
  was announced while nobody listened: `reconcile` claims and queues it as recovered.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import redis

from expiryd import defaults
from expiryd.keyspace import Keyspace
from expiryd.queue import ENQUEUE, NOW

# KEYS: deadlines, values, recent, watched keys...   ARGV: capture ("1" or "0")
_RECORD = (
    NOW
    + """
local recorded = 0
for i = 4, #KEYS do
  local key = KEYS[i]
  local ttl = redis.call('PTTL', key)
  if ttl >= 0 then
    redis.call('ZADD', KEYS[1], ms(now + ttl), key)
    redis.call('ZREM', KEYS[3], key)
    recorded = recorded + 1
    if ARGV[1] == '1' and redis.call('TYPE', key)['ok'] == 'string' then
      redis.call('HSET', KEYS[2], key, redis.call('GET', key))
    end
  elseif ttl == -1 then
    redis.call('ZREM', KEYS[1], key)
    redis.call('HDEL', KEYS[2], key)
  end
end
return recorded
"""
)

# Shared by claim and reconcile, whose first seven KEYS are the same.
_QUEUE_CLAIM = """
local q = {next_id = KEYS[6], ready = KEYS[7], job_prefix = ARGV[#ARGV]}
-- The claim wins: queue the expiry with its value, and remember the claim so a repeated
-- event for it is dropped.
local function queue_claim(key, source, deadline)
  local value = redis.call('HGET', KEYS[4], key)
  redis.call('HDEL', KEYS[4], key)
  redis.call('ZADD', KEYS[5], ms(now), key)
  return enqueue(q, key, source, deadline, value)
end
"""

# KEYS: deadlines, gone, gone_deadlines, values, recent, next_id, ready, keys...
# ARGV: keep_ms, job prefix (last)
_CLAIM = (
    NOW
    + ENQUEUE
    + _QUEUE_CLAIM
    + """
local jobs = {}
for i = 8, #KEYS do
  local key = KEYS[i]
  local source = 'event'
  local deadline = redis.call('ZSCORE', KEYS[1], key)
  if deadline then
    redis.call('ZREM', KEYS[1], key)
  else
    deadline = redis.call('HGET', KEYS[3], key)
    if deadline then
      source = 'nudge'
      redis.call('ZREM', KEYS[2], key)
      redis.call('HDEL', KEYS[3], key)
    elseif redis.call('ZSCORE', KEYS[5], key) then
      source = false
    end
  end
  if source then
    jobs[i - 7] = queue_claim(key, source, deadline)
  else
    jobs[i - 7] = false
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', ms(now - tonumber(ARGV[1])))
return jobs
"""
)

# KEYS: deadlines, gone, gone_deadlines, values, recent, next_id, ready
# ARGV: found_until_ms, limit, keep_ms, job prefix (last)
_RECONCILE = (
    NOW
    + ENQUEUE
    + _QUEUE_CLAIM
    + """
local keys = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local recovered = 0
for _, key in ipairs(keys) do
  local deadline = redis.call('HGET', KEYS[3], key)
  redis.call('ZREM', KEYS[2], key)
  redis.call('HDEL', KEYS[3], key)
  -- A key set again since it was found gone is live, and its new deadline counts.
  if not redis.call('ZSCORE', KEYS[1], key) and redis.call('EXISTS', key) == 0 then
    queue_claim(key, 'recovery', deadline)
    recovered = recovered + 1
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', ms(now - tonumber(ARGV[3])))
return {#keys, recovered}
"""
)

# KEYS: deadlines, gone, gone_deadlines, values   ARGV: limit, channel, marker prefix
_SWEEP = (
    NOW
    + """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ms(now), 'WITHSCORES', 'LIMIT', 0, ARGV[1])
local moved = 0
for i = 1, #due, 2 do
  local key = due[i]
  -- A script sees the clock as it was when it started, so a key due by TIME may still
  -- have 0 ms to live here: it is not gone, and the next sweep will find it so.
  local ttl = redis.call('PTTL', key)
  if ttl >= 0 then
    redis.call('ZADD', KEYS[1], ms(now + ttl), key)
  elseif ttl == -1 then
    redis.call('ZREM', KEYS[1], key)
    redis.call('HDEL', KEYS[4], key)
  else
    redis.call('ZREM', KEYS[1], key)
    redis.call('ZADD', KEYS[2], ms(now), key)
    redis.call('HSET', KEYS[3], key, due[i + 1])
    moved = moved + 1
  end
end
if redis.call('ZCARD', KEYS[2]) > 0 then
  redis.call('PUBLISH', ARGV[2], ARGV[3] .. ms(now))
end
return {#due / 2, moved}
"""
)


@dataclass(frozen=True)
class SweepResult:
    due: int
    gone: int


class Ledger:
    def __init__(
        self,
        client: redis.Redis,
        keyspace: Keyspace,
        capture_values: bool = defaults.CAPTURE_VALUES,
        recent_seconds: int = defaults.RECENT_SECONDS,
    ) -> None:
        self.client = client
        self.keyspace = keyspace
        self.capture_values = capture_values
        self._keep_ms = recent_seconds * 1000
        ks = keyspace
        self._claim_keys = [
            ks.deadlines, ks.gone, ks.gone_deadlines, ks.values, ks.recent, ks.next_id, ks.ready,
        ]  # fmt: skip
        self._record = client.register_script(_RECORD)
        self._claim = client.register_script(_CLAIM)
        self._reconcile = client.register_script(_RECONCILE)
        self._sweep = client.register_script(_SWEEP)

    def record(self, keys: Sequence[bytes]) -> int:
        """Store the deadline of each key that has a TTL; forget those that have none."""
        if not keys:
            return 0
        ks = self.keyspace
        capture = "1" if self.capture_values else "0"
        return int(self._record(keys=[ks.deadlines, ks.values, ks.recent, *keys], args=[capture]))

    def forget(self, keys: Sequence[bytes]) -> None:
        if not keys:
            return
        with self.client.pipeline(transaction=True) as pipe:
            pipe.zrem(self.keyspace.deadlines, *keys)
            pipe.hdel(self.keyspace.values, *keys)
            pipe.execute()

    def claim(self, keys: Sequence[bytes]) -> list[str | None]:
        """Claim expiries Redis announced and queue each as a job, in one round trip: the
        job ids, with None for each expiry that was claimed already."""
        if not keys:
            return []
        ks = self.keyspace
        replies = self._claim(keys=[*self._claim_keys, *keys], args=[self._keep_ms, ks.job_prefix])
        return [reply.decode() if reply else None for reply in replies]

    def reconcile(self, found_until_ms: int, limit: int = defaults.SWEEP_LIMIT) -> int:
        """Claim and queue every key found gone up to `found_until_ms` whose expiry nobody
        announced; the number recovered."""
        recovered = 0
        while True:
            looked_at, queued = self._reconcile(
                keys=self._claim_keys,
                args=[found_until_ms, limit, self._keep_ms, self.keyspace.job_prefix],
            )
            recovered += int(queued)
            if looked_at < limit:
                return recovered

    def sweep(self, marker_prefix: str, limit: int = defaults.SWEEP_LIMIT) -> SweepResult:
        """Look at every key whose deadline has passed (which makes Redis expire it now)."""
        ks = self.keyspace
        due, gone = self._sweep(
            keys=[ks.deadlines, ks.gone, ks.gone_deadlines, ks.values],
            args=[limit, ks.sweep_channel, marker_prefix],
        )
        return SweepResult(int(due), int(gone))

    def scan(self, max_key_bytes: int, count: int = defaults.SCAN_COUNT) -> int:
        """Record every key of the watched DB that has a TTL; the number recorded."""
        recorded = 0
        for batch in _batches(self.client.scan_iter(count=count), count):
            keys = [k for k in batch if not self.keyspace.owns(k) and len(k) <= max_key_bytes]
            recorded += self.record(keys)
        return recorded


def _batches(keys: Iterable[bytes], size: int) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    for key in keys:
        batch.append(key)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch

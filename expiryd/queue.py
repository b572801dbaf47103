"""Durable work in Redis: every claimed expiry is a job that waits in `ready`, is leased by
one worker, and is then acknowledged, retried later, or dead-lettered.

A job is a HASH (key, source, deadline, value, enqueued, attempt, lease, error, failed_at).
A worker's lease is a token written into the job: settling a job whose lease has passed
to another worker does nothing, so a slow worker cannot undo a newer attempt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from expiryd.expiry import Source
from expiryd.keyspace import Keyspace

NOW = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local function ms(n) return string.format('%.0f', n) end
"""

ENQUEUE = """
-- Queue an expiry as a job: `q` holds the names of the counter, the ready set and the
-- job prefix.
local function enqueue(q, key, source, deadline, value)
  local id = tostring(redis.call('INCR', q.next_id))
  local job = q.job_prefix .. id
  redis.call('HSET', job, 'key', key, 'source', source, 'enqueued', ms(now), 'attempt', 0)
  if deadline and deadline ~= '' then redis.call('HSET', job, 'deadline', deadline) end
  if value then redis.call('HSET', job, 'value', value) end
  redis.call('ZADD', q.ready, ms(now), id)
  return id
end
"""

# KEYS: ready, leases   ARGV: limit, lease_ms, token, job prefix
_TAKE = (
    NOW
    + """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ms(now), 'LIMIT', 0, ARGV[1])
local taken = {}
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  local job = ARGV[4] .. id
  if redis.call('EXISTS', job) == 1 then
    redis.call('ZADD', KEYS[2], ms(now + tonumber(ARGV[2])), id)
    redis.call('HINCRBY', job, 'attempt', 1)
    redis.call('HSET', job, 'lease', ARGV[3])
    table.insert(taken, {id, redis.call('HGETALL', job)})
  end
end
return taken
"""
)

# KEYS: leases, ready, dead   ARGV: token, job prefix, then (id, action, delay_ms, error)...
_SETTLE = (
    NOW
    + """
local settled = 0
for i = 3, #ARGV, 4 do
  local id, action, delay, err = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3]
  local job = ARGV[2] .. id
  if redis.call('HGET', job, 'lease') == ARGV[1] then
    redis.call('ZREM', KEYS[1], id)
    settled = settled + 1
    if action == 'ack' then
      redis.call('DEL', job)
    elseif action == 'retry' then
      redis.call('HSET', job, 'lease', '', 'error', err)
      redis.call('ZADD', KEYS[2], ms(now + delay), id)
    else
      redis.call('HSET', job, 'lease', '', 'error', err, 'failed_at', ms(now))
      redis.call('ZADD', KEYS[3], ms(now), id)
    end
  end
end
return settled
"""
)

# KEYS: leases, ready   ARGV: job prefix, limit
_REQUEUE = (
    NOW
    + """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ms(now), 'LIMIT', 0, ARGV[2])
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  if redis.call('EXISTS', ARGV[1] .. id) == 1 then
    redis.call('HSET', ARGV[1] .. id, 'lease', '')
    redis.call('ZADD', KEYS[2], ms(now), id)
  end
end
return #ids
"""
)

# KEYS: dead, ready   ARGV: job prefix, ids...
_REPLAY = (
    NOW
    + """
local replayed = 0
for i = 2, #ARGV do
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
    redis.call('HSET', ARGV[1] .. ARGV[i], 'attempt', 0, 'error', '', 'failed_at', '')
    redis.call('ZADD', KEYS[2], ms(now), ARGV[i])
    replayed = replayed + 1
  end
end
return replayed
"""
)


@dataclass(frozen=True)
class Job:
    id: str
    key: bytes
    source: Source
    attempt: int
    enqueued_ms: int
    deadline_ms: int | None = None
    value: bytes | None = None
    error: str = ""
    failed_ms: int | None = None

    @classmethod
    def from_hash(cls, job_id: str, fields: dict[bytes, bytes]) -> Job:
        def number(name: bytes) -> int | None:
            raw = fields.get(name)
            return int(raw) if raw else None

        return cls(
            id=job_id,
            key=fields[b"key"],
            source=Source(fields.get(b"source", b"event").decode()),
            attempt=number(b"attempt") or 0,
            enqueued_ms=number(b"enqueued") or 0,
            deadline_ms=number(b"deadline"),
            value=fields.get(b"value"),
            error=fields.get(b"error", b"").decode("utf-8", "replace"),
            failed_ms=number(b"failed_at"),
        )


@dataclass(frozen=True)
class Settlement:
    """What became of a job: "ack", "retry" (after `delay_ms`) or "dead"."""

    job_id: str
    action: str
    delay_ms: int = 0
    error: str = ""


@dataclass
class JobQueue:
    client: redis.Redis
    keyspace: Keyspace
    _scripts: dict[str, Any] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        for name, source in (
            ("take", _TAKE), ("settle", _SETTLE), ("requeue", _REQUEUE), ("replay", _REPLAY),
        ):  # fmt: skip
            self._scripts[name] = self.client.register_script(source)

    def take(self, limit: int, lease_ms: int, token: str) -> list[Job]:
        """Lease up to `limit` jobs that are due; each one's attempt count goes up by one."""
        ks = self.keyspace
        taken = self._scripts["take"](
            keys=[ks.ready, ks.leases], args=[limit, lease_ms, token, ks.job_prefix]
        )
        return [Job.from_hash(job_id.decode(), _pairs(flat)) for job_id, flat in taken]

    def settle(self, token: str, settlements: Sequence[Settlement]) -> int:
        """Record the outcome of jobs leased with `token`; the number still ours."""
        if not settlements:
            return 0
        args: list[Any] = [token, self.keyspace.job_prefix]
        for s in settlements:
            args += [s.job_id, s.action, s.delay_ms, s.error]
        ks = self.keyspace
        return int(self._scripts["settle"](keys=[ks.leases, ks.ready, ks.dead], args=args))

    def requeue_lapsed(self, limit: int = 1000) -> int:
        """Hand out again the jobs whose worker's lease ran out."""
        ks = self.keyspace
        return int(
            self._scripts["requeue"](keys=[ks.leases, ks.ready], args=[ks.job_prefix, limit])
        )

    def dead(self) -> list[Job]:
        members: list[bytes] = self.client.zrange(self.keyspace.dead, 0, -1)  # type: ignore[assignment]
        ids = [job_id.decode() for job_id in members]
        with self.client.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hgetall(self.keyspace.job(job_id))
            found = pipe.execute()
        return [
            Job.from_hash(job_id, fields)
            for job_id, fields in zip(ids, found, strict=True)
            if fields
        ]

    def replay(self, job_ids: Sequence[str]) -> int:
        if not job_ids:
            return 0
        ks = self.keyspace
        return int(
            self._scripts["replay"](keys=[ks.dead, ks.ready], args=[ks.job_prefix, *job_ids])
        )

    def purge(self, job_ids: Sequence[str]) -> int:
        if not job_ids:
            return 0
        with self.client.pipeline(transaction=True) as pipe:
            pipe.zrem(self.keyspace.dead, *job_ids)
            pipe.delete(*[self.keyspace.job(job_id) for job_id in job_ids])
            removed, _ = pipe.execute()
        return int(removed)

    def counts(self) -> dict[str, int]:
        ks = self.keyspace
        with self.client.pipeline(transaction=False) as pipe:
            pipe.zcard(ks.ready)
            pipe.zcard(ks.leases)
            pipe.zcard(ks.dead)
            ready, leased, dead = pipe.execute()
        return {"ready": ready, "leased": leased, "dead": dead}


def _pairs(flat: Sequence[bytes]) -> dict[bytes, bytes]:
    return dict(zip(flat[::2], flat[1::2], strict=True))

"""Durable work in Redis: every claimed expiry is a job that waits in `ready`, is leased by
one worker, and is then acknowledged, retried later, or dead-lettered.

A job is a HASH (key, source, deadline, value, enqueued, attempt, lapses, lease, error,
failed_at). `attempt` counts the attempts whose outcome was recorded, `lapses` the leases
that ran out under a worker that died. A worker's lease is a token written into the job:
settling a job whose lease has passed to another worker does nothing, so a slow worker
cannot undo a newer attempt.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from expiryd import lua
from expiryd.expiry import Source
from expiryd.keyspace import Keyspace

CHUNK = 1000
"""Jobs per command or script when acting on many, so Redis never blocks for long."""


@dataclass(frozen=True)
class Job:
    id: str
    key: bytes
    source: Source
    attempt: int
    """Attempts made before this one whose outcome was recorded."""
    enqueued_ms: int
    deadline_ms: int | None = None
    value: bytes | None = None
    error: str = ""
    failed_ms: int | None = None
    lapses: int = 0
    """Times a worker holding it died (or its lease ran out) before settling it."""

    @classmethod
    def from_hash(cls, job_id: str, fields: dict[bytes, bytes]) -> Job:
        return cls(
            id=job_id,
            key=fields[b"key"],
            source=Source(fields.get(b"source", b"event").decode()),
            attempt=read_ms(fields.get(b"attempt")) or 0,
            enqueued_ms=read_ms(fields.get(b"enqueued")) or 0,
            deadline_ms=read_ms(fields.get(b"deadline")),
            value=fields.get(b"value"),
            error=fields.get(b"error", b"").decode("utf-8", "replace"),
            failed_ms=read_ms(fields.get(b"failed_at")),
            lapses=read_ms(fields.get(b"lapses")) or 0,
        )


def read_ms(raw: bytes | str | None) -> int | None:
    """A whole number as Redis may write it: `1735000000000`, `1.735e+12`, `42`."""
    if not raw:
        return None
    return int(float(raw))


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
        for name in ("take", "settle", "requeue", "replay", "mark", "extend"):
            self._scripts[name] = lua.register(self.client, f"queue_{name}", "clock")

    def take(self, limit: int, lease_ms: int, token: str) -> list[Job]:
        """Lease up to `limit` jobs that are due."""
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

    def extend(self, token: str, job_ids: Sequence[str], lease_ms: int) -> int:
        """Renew the lease of jobs still held with `token`; the number still ours."""
        if not job_ids:
            return 0
        args = [token, self.keyspace.job_prefix, lease_ms, *job_ids]
        return int(self._scripts["extend"](keys=[self.keyspace.leases], args=args))

    def mark(self, token: str, job_ids: Sequence[str], started: bool) -> None:
        """Mark jobs of a batch as waiting, or as the one running now (see requeue)."""
        mark = token if started else "-"
        self._scripts["mark"](keys=[], args=[token, self.keyspace.job_prefix, mark, *job_ids])

    def requeue_lapsed(self, limit: int = CHUNK) -> int:
        """Hand out again the jobs whose worker's lease ran out."""
        ks = self.keyspace
        return int(
            self._scripts["requeue"](keys=[ks.leases, ks.ready], args=[ks.job_prefix, limit])
        )

    def dead(self) -> list[Job]:
        members: list[bytes] = self.client.zrange(self.keyspace.dead, 0, -1)  # type: ignore[assignment]
        jobs: list[Job] = []
        for chunk in _chunks([job_id.decode() for job_id in members]):
            with self.client.pipeline(transaction=False) as pipe:
                for job_id in chunk:
                    pipe.hgetall(self.keyspace.job(job_id))
                found = pipe.execute()
            jobs += [
                Job.from_hash(i, fields) for i, fields in zip(chunk, found, strict=True) if fields
            ]
        return jobs

    def replay(self, job_ids: Sequence[str]) -> int:
        ks = self.keyspace
        return sum(
            int(self._scripts["replay"](keys=[ks.dead, ks.ready], args=[ks.job_prefix, *chunk]))
            for chunk in _chunks(job_ids)
        )

    def purge(self, job_ids: Sequence[str]) -> int:
        removed = 0
        for chunk in _chunks(job_ids):
            with self.client.pipeline(transaction=True) as pipe:
                pipe.zrem(self.keyspace.dead, *chunk)
                pipe.delete(*[self.keyspace.job(job_id) for job_id in chunk])
                gone, _ = pipe.execute()
            removed += int(gone)
        return removed

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


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]

"""Durable work in Redis: every claimed expiry is a job that waits in `ready`, is leased by
one worker, and is then acknowledged, retried later, or dead-lettered.

Jobs live in one HASH, id -> a record packed with Redis's own cmsgpack (the layout is in
`lua/jobs.lua`), so that every queue script names every key it touches, and a batch of
jobs is a handful of commands however large it is. A worker's lease is its token in the owners
HASH: settling a job whose lease has passed to another worker does nothing, so a slow
worker cannot undo a newer attempt.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import redis

from expiryd.expiry import Source
from expiryd.redis import lua
from expiryd.redis.keyspace import Keyspace
from expiryd.redis.upgrade import upgrade_jobs

CHUNK = 1000
"""Jobs per command or script when acting on many, so Redis never blocks for long."""

MISSING = "queued without a record (deleted by hand, or queued by another version): dropped"
"""Why an id is taken out of the queue with nothing to run."""


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

    unreadable: str = ""
    """Why its record could not be read, when it could not: it is dead-lettered as is."""

    @classmethod
    def unpack(cls, job_id: str, record: bytes) -> Job:
        try:
            return cls._unpack(job_id, record)
        except Exception as exc:  # written by something else: any shape at all
            problem = f"its record in Redis is not one expiryd wrote: {type(exc).__name__}: {exc}"
            return cls(job_id, b"", Source.EVENT, 0, 0, error=problem, unreadable=problem)

    @classmethod
    def _unpack(cls, job_id: str, record: bytes) -> Job:
        """The same test, field by field, as `readable` in `lua/jobs.lua`: a record one
        side can update is one the other can run."""
        key, source, enqueued, deadline, value, attempt, lapses, error, failed = msgpack.unpackb(
            record, raw=True
        )
        if not isinstance(key, bytes) or not isinstance(source, bytes):
            raise TypeError("its key and source are not strings")
        if not isinstance(error, bytes) or not (value is False or isinstance(value, bytes)):
            raise TypeError("its value or error is not a string")
        return cls(
            id=job_id,
            key=key,
            source=Source(source.decode()),
            attempt=_number(attempt),
            enqueued_ms=_number(enqueued),
            deadline_ms=_number_or_none(deadline),
            value=None if value is False else value,
            error=error.decode("utf-8", "replace"),
            failed_ms=_number_or_none(failed),
            lapses=_number(lapses),
        )


def _number(packed: object) -> int:
    """A packed number, which Lua may have packed as a float."""
    if isinstance(packed, bool) or not isinstance(packed, int | float):
        raise TypeError(f"{packed!r} where a number belongs")
    return int(packed)


def _number_or_none(packed: object) -> int | None:
    """A packed number, or false for none."""
    return None if packed is False else _number(packed)


@dataclass(frozen=True)
class Settlement:
    """What became of a job: "ack", "retry" (after `delay_ms`), "defer" (a retry that
    uses up no attempt) or "dead"."""

    job_id: str
    action: str
    delay_ms: int = 0
    error: str = ""


@dataclass
class JobQueue:
    client: redis.Redis
    keyspace: Keyspace
    _scripts: dict[str, Any] = field(default_factory=dict, init=False, repr=False)
    _requeue_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _requeue_after: float = field(default=0.0, init=False, repr=False)
    """When (monotonic) `requeue_lapsed_if_due` next requeues."""

    def __post_init__(self) -> None:
        for name in ("take", "settle", "requeue", "replay", "mark", "extend"):
            self._scripts[name] = lua.register(self.client, f"queue_{name}", *lua.JOBS)

    def take(self, limit: int, lease_ms: int, token: str) -> tuple[list[Job], int]:
        """Lease up to `limit` jobs that are due; also the number of ids found in the
        queue without a record, which were dropped from it."""
        ks = self.keyspace
        missing, *taken = self._scripts["take"](
            keys=[ks.ready, ks.leases, ks.jobs, ks.owners], args=[limit, lease_ms, token]
        )
        jobs = [
            Job.unpack(i.decode(), record)
            for i, record in zip(taken[::2], taken[1::2], strict=True)
        ]
        return jobs, int(missing)

    def settle(self, token: str, settlements: Sequence[Settlement]) -> int:
        """Record the outcome of jobs leased with `token`; the number still ours."""
        if not settlements:
            return 0
        args: list[Any] = [token]
        for s in settlements:
            args += [s.job_id, s.action, s.delay_ms, s.error]
        ks = self.keyspace
        keys = [ks.leases, ks.ready, ks.dead, ks.jobs, ks.owners]
        return int(self._scripts["settle"](keys=keys, args=args))

    def extend(self, token: str, job_ids: Sequence[str], lease_ms: int) -> int:
        """Renew the lease of jobs still held with `token`; the number still ours."""
        ks = self.keyspace
        return self._by_chunk("extend", [ks.leases, ks.owners], [token, lease_ms], job_ids)

    def mark_started(self, token: str, job_ids: Sequence[str]) -> int:
        """Mark jobs leased with `token` as about to run (see requeue); the number still
        ours."""
        return self._by_chunk("mark", [self.keyspace.owners], [token, "+"], job_ids)

    def requeue_lapsed(self, limit: int = CHUNK) -> tuple[int, int]:
        """Hand out again the jobs whose worker's lease ran out; how many, and how many
        ids were found without a record and dropped."""
        ks = self.keyspace
        keys = [ks.leases, ks.ready, ks.jobs, ks.owners]
        requeued, missing = self._scripts["requeue"](keys=keys, args=[limit])
        return int(requeued), int(missing)

    def requeue_lapsed_if_due(self, every_s: float) -> tuple[int, int]:
        """`requeue_lapsed`, a chunk at a time until none is left, unless that was done
        through this queue (which a process's workers share) less than `every_s` ago:
        then (0, 0). Each chunk is one script, so two processes at once hand a job out
        once."""
        with self._requeue_lock:
            now = time.monotonic()
            if now < self._requeue_after:
                return 0, 0
            self._requeue_after = now + every_s
        requeued = missing = 0
        while True:
            more, gone = self.requeue_lapsed()
            requeued, missing = requeued + more, missing + gone
            if more + gone < CHUNK:
                return requeued, missing

    def upgrade(self) -> int:
        """Move in jobs an earlier expiryd queued (see `upgrade`); the number moved."""
        return upgrade_jobs(self.client, self.keyspace, CHUNK)

    def _by_chunk(
        self, script: str, keys: list[str], head: list[Any], job_ids: Sequence[str]
    ) -> int:
        """Run a script on the ids a chunk at a time (its ARGV: `head`, then the ids);
        the sum of what it returns."""
        run = self._scripts[script]
        return sum(int(run(keys=keys, args=[*head, *ids])) for ids in _chunks(job_ids))

    def dead(self) -> list[Job]:
        members: list[bytes] = self.client.zrange(self.keyspace.dead, 0, -1)  # type: ignore[assignment]
        jobs: list[Job] = []
        for chunk in _chunks([job_id.decode() for job_id in members]):
            found: list[bytes | None] = self.client.hmget(self.keyspace.jobs, chunk)  # type: ignore[assignment]
            jobs += [
                Job.unpack(i, record) for i, record in zip(chunk, found, strict=True) if record
            ]
        return jobs

    def replay(self, job_ids: Sequence[str]) -> int:
        ks = self.keyspace
        return self._by_chunk("replay", [ks.dead, ks.ready, ks.jobs], [], job_ids)

    def purge(self, job_ids: Sequence[str]) -> int:
        removed = 0
        for chunk in _chunks(job_ids):
            with self.client.pipeline(transaction=True) as pipe:
                pipe.zrem(self.keyspace.dead, *chunk)
                pipe.hdel(self.keyspace.jobs, *chunk)
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


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]

"""Jobs queued by an earlier expiryd, one HASH per job, moved into the jobs HASH once, so
that an upgrade loses none of what was ready, leased or dead-lettered when it was made.
(Run one version at a time: an older daemon still running would queue jobs the newer
one cannot see.)"""

from __future__ import annotations

from collections.abc import Iterator

import msgpack
import redis

from expiryd.redis.keyspace import Keyspace

LAYOUT = "2"
"""Jobs are fields of the jobs HASH (see `lua/jobs.lua`)."""


def upgrade_jobs(client: redis.Redis, keyspace: Keyspace, chunk: int) -> int:
    """Move every job of the earlier layout in, once; the number moved."""
    if client.get(keyspace.layout) == LAYOUT.encode():
        return 0
    moved = 0
    while True:  # again until nothing moves: another daemon may change the sets meanwhile
        moved_now = 0
        for ids in _queued_ids(client, keyspace, chunk):
            records: list[bytes | None] = client.hmget(keyspace.jobs, ids)  # type: ignore[assignment]
            missing = [i for i, record in zip(ids, records, strict=True) if record is None]
            moved_now += _move(client, keyspace, missing)
        moved += moved_now
        if not moved_now:
            break
    client.set(keyspace.layout, LAYOUT)
    return moved


def _queued_ids(client: redis.Redis, keyspace: Keyspace, chunk: int) -> Iterator[list[str]]:
    for queue in (keyspace.ready, keyspace.leases, keyspace.dead):
        for start in range(0, int(client.zcard(queue)), chunk):
            members = client.zrange(queue, start, start + chunk - 1)
            if members:
                yield [m.decode() for m in members]  # type: ignore[union-attr]


def _move(client: redis.Redis, keyspace: Keyspace, job_ids: list[str]) -> int:
    with client.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hgetall(keyspace.legacy_job(job_id))
        found = pipe.execute()
    moved = 0
    with client.pipeline(transaction=True) as pipe:
        for job_id, fields in zip(job_ids, found, strict=True):
            if fields:
                pipe.hsetnx(keyspace.jobs, job_id, _record(fields))
                pipe.delete(keyspace.legacy_job(job_id))
                moved += 1
        pipe.execute()
    return moved


def _record(fields: dict[bytes, bytes]) -> bytes:
    """The earlier HASH as today's record, strings packed as Lua packs them."""

    def number(name: bytes) -> int | bool:
        """A number as Redis wrote it (`1.7e+12` included), or false; an unreadable one
        is false too, and shows as missing in the job's log line."""
        try:
            return int(float(fields[name]))
        except (KeyError, ValueError, OverflowError):
            return False

    record = [
        fields.get(b"key", b""),
        fields.get(b"source", b"event"),
        number(b"enqueued") or 0,
        number(b"deadline"),
        fields.get(b"value", False),
        number(b"attempt") or 0,
        number(b"lapses") or 0,
        fields.get(b"error", b""),
        number(b"failed_at"),
    ]
    return msgpack.packb(record, use_bin_type=False)

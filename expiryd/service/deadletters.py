"""`expiryd dead`: what an operator sees of, and does with, dead-lettered expiries."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime

from expiryd.config import Config
from expiryd.errors import ServiceError
from expiryd.logs import describe_error, display_key, escape_text
from expiryd.redis.connections import CONNECTION_ERRORS, RedisTarget
from expiryd.redis.queue import Job, JobQueue
from expiryd.redis.shards import shard_keyspaces


@contextmanager
def open_queues(settings: Config) -> Iterator[list[JobQueue]]:
    """The queue of every shard (one, but for a cluster's)."""
    target = RedisTarget.from_url(settings.redis.url)
    client = target.client()
    try:
        keyspaces = shard_keyspaces(target, client, settings.redis.prefix)
        yield [JobQueue(client, keyspace) for keyspace in keyspaces]
    except CONNECTION_ERRORS as exc:
        raise ServiceError(f"Redis at {target.safe_url}: {describe_error(exc)}") from None
    finally:
        client.close()


def describe(jobs: Sequence[Job], as_json: bool) -> Iterator[str]:
    for job in jobs:
        record = {
            "expiry_id": job.id,
            "key": display_key(job.key),
            "attempts": job.attempt,
            "error": job.error,
            "failed_at": _iso(job.failed_ms),
            "queued_at": _iso(job.enqueued_ms),
            "deadline": _iso(job.deadline_ms),
            "source": job.source.value,
        }
        if as_json:
            yield json.dumps(record, ensure_ascii=False)
        else:
            yield (
                f"{record['failed_at']}  {record['key']}  attempts={job.attempt}  "
                f"error={escape_text(job.error)}"
            )


def select(jobs: Sequence[Job], keys: Sequence[str], everything: bool) -> list[Job]:
    if everything:
        return list(jobs)
    wanted = {key.encode() for key in keys}
    return [job for job in jobs if job.key in wanted]


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")

"""The job queue's scripts against a real redis-server."""

from __future__ import annotations

import time

import pytest
import redis

from expiryd.redis.ledger import Ledger, Op, Step
from expiryd.redis.queue import Job, JobQueue, Settlement
from tests.integration.conftest import KEYSPACE


@pytest.fixture
def queue(client: redis.Redis) -> JobQueue:
    return JobQueue(client, KEYSPACE)


def enqueue(client: redis.Redis, *keys: bytes) -> list[str]:
    replies = Ledger(client, KEYSPACE).apply([Step(Op.CLAIM, key) for key in keys]).replies
    assert all(replies)
    return [str(i) for i in replies]


def take(queue: JobQueue, limit: int, lease_ms: int, token: str) -> list[Job]:
    jobs, missing = queue.take(limit, lease_ms, token)
    assert missing == 0
    return jobs


def test_ids_without_a_record_are_counted_as_they_are_dropped(
    client: redis.Redis, queue: JobQueue
) -> None:
    (job_id,) = enqueue(client, b"k")
    client.zadd(KEYSPACE.ready, {"no-record-1": 0, "no-record-2": 0})
    jobs, missing = queue.take(10, 50, "w1")
    assert ([job.id for job in jobs], missing) == ([job_id], 2)
    client.zadd(KEYSPACE.leases, {"no-record-3": 0})
    time.sleep(0.1)
    assert queue.requeue_lapsed() == (1, 1)
    assert client.zcard(KEYSPACE.leases) == 0 and client.zcard(KEYSPACE.ready) == 1


def test_jobs_queued_by_an_earlier_expiryd_are_moved_in_once(
    client: redis.Redis, queue: JobQueue
) -> None:
    """Before jobs were records of one HASH, each was a HASH of its own."""
    earlier = {
        "r1": {"key": "order:cancel:1", "source": "event", "enqueued": "1.7e+12",
               "attempt": "2", "deadline": "1700000000000", "error": "boom"},
        "d1": {"key": "order:cancel:2", "source": "recovery", "enqueued": "1700000000001",
               "attempt": "10", "lapses": "1", "failed_at": "1700000000500", "value": "v"},
    }  # fmt: skip
    for job_id, fields in earlier.items():
        client.hset(KEYSPACE.legacy_job(job_id), mapping=fields)
    client.zadd(KEYSPACE.ready, {"r1": 0})
    client.zadd(KEYSPACE.dead, {"d1": 1})
    (kept,) = enqueue(client, b"today")

    assert queue.upgrade() == 2
    assert queue.upgrade() == 0
    (ready,) = [j for j in take(queue, 10, 30_000, "w1") if j.id == "r1"]
    assert (ready.key, ready.attempt, ready.deadline_ms, ready.error) == (
        b"order:cancel:1",
        2,
        1_700_000_000_000,
        "boom",
    )
    (dead,) = queue.dead()
    assert (dead.id, dead.value, dead.failed_ms, dead.lapses) == ("d1", b"v", 1_700_000_000_500, 1)
    assert client.exists(KEYSPACE.legacy_job("r1"), KEYSPACE.legacy_job("d1")) == 0
    assert client.hexists(KEYSPACE.jobs, kept)


def test_a_job_is_leased_to_one_worker_at_a_time(client: redis.Redis, queue: JobQueue) -> None:
    enqueue(client, b"k1", b"k2")
    taken = take(queue, 10, 30_000, "w1")
    assert sorted((j.key, j.attempt) for j in taken) == [(b"k1", 0), (b"k2", 0)]
    assert take(queue, 10, 30_000, "w2") == []
    assert queue.counts() == {"ready": 0, "leased": 2, "dead": 0}


def test_ack_deletes_the_job(client: redis.Redis, queue: JobQueue) -> None:
    (job_id,) = enqueue(client, b"k")
    take(queue, 10, 30_000, "w1")
    assert queue.settle("w1", [Settlement(job_id, "ack")]) == 1
    assert client.hlen(KEYSPACE.jobs) == client.hlen(KEYSPACE.owners) == 0
    assert queue.counts() == {"ready": 0, "leased": 0, "dead": 0}


def test_a_retry_waits_then_runs_again_with_the_next_attempt(
    client: redis.Redis, queue: JobQueue
) -> None:
    (job_id,) = enqueue(client, b"k")
    take(queue, 10, 30_000, "w1")
    queue.settle("w1", [Settlement(job_id, "retry", 200, "OperationalError: gone away")])
    assert take(queue, 10, 30_000, "w1") == []
    time.sleep(0.25)
    (again,) = take(queue, 10, 30_000, "w1")
    assert (again.id, again.attempt, again.error) == (job_id, 1, "OperationalError: gone away")


def test_a_lapsed_lease_is_handed_out_again_and_the_old_worker_cannot_settle(
    client: redis.Redis, queue: JobQueue
) -> None:
    (job_id,) = enqueue(client, b"k")
    take(queue, 10, 50, "w1")
    queue.mark_started("w1", [job_id])
    time.sleep(0.1)
    assert queue.requeue_lapsed() == (1, 0)
    (again,) = take(queue, 10, 30_000, "w2")
    assert (again.attempt, again.lapses) == (0, 1)  # a crash uses up no attempt
    assert queue.settle("w1", [Settlement(job_id, "ack")]) == 0
    assert queue.settle("w2", [Settlement(job_id, "ack")]) == 1


def test_dead_letters_can_be_listed_replayed_and_purged(
    client: redis.Redis, queue: JobQueue
) -> None:
    first, second = enqueue(client, b"k1", b"k2")
    take(queue, 10, 30_000, "w1")
    queue.settle(
        "w1",
        [Settlement(first, "dead", 0, "ProgrammingError: (1054, \"Unknown column 'x'\")"),
         Settlement(second, "dead", 0, "Permanent: no")],
    )  # fmt: skip
    dead = {job.key: job for job in queue.dead()}
    assert set(dead) == {b"k1", b"k2"}
    assert "Unknown column" in dead[b"k1"].error
    assert dead[b"k1"].failed_ms is not None
    assert queue.replay([first]) == 1
    (replayed,) = take(queue, 10, 30_000, "w1")
    assert (replayed.id, replayed.attempt, replayed.error) == (first, 0, "")
    assert queue.purge([second]) == 1
    assert queue.dead() == []
    assert client.hexists(KEYSPACE.jobs, second) == 0


def test_replay_and_purge_work_in_chunks_over_many_dead_letters(
    client: redis.Redis, queue: JobQueue
) -> None:
    ids = enqueue(client, *[f"k{n}".encode() for n in range(2500)])
    take(queue, 3000, 30_000, "w1")
    queue.settle("w1", [Settlement(i, "dead", 0, "Permanent: no") for i in ids])
    assert queue.replay(ids[:1200]) == 1200
    assert queue.purge(ids[1200:]) == 1300
    assert queue.counts() == {"ready": 1200, "leased": 0, "dead": 0}


def test_a_lapse_counts_only_against_the_jobs_a_worker_had_started(
    client: redis.Redis, queue: JobQueue
) -> None:
    ids = enqueue(client, b"k1", b"k2", b"k3")
    take(queue, 10, 50, "w1")
    queue.mark_started("w1", ids[:2])  # a group of two was running when w1 died
    time.sleep(0.1)
    queue.requeue_lapsed()
    lapses = {job.id: job.lapses for job in take(queue, 10, 50, "w2")}
    assert lapses == {ids[0]: 1, ids[1]: 1, ids[2]: 0}
    queue.mark_started("w2", [ids[1]])  # one at a time now
    queue.mark_started("w1", [ids[2]])  # not w1's any more: no mark
    time.sleep(0.1)
    queue.requeue_lapsed()
    lapses = {job.id: job.lapses for job in take(queue, 10, 30_000, "w3")}
    assert lapses == {ids[0]: 1, ids[1]: 2, ids[2]: 0}


def test_a_renewed_lease_does_not_lapse_and_a_settled_job_is_not_renewed(
    client: redis.Redis, queue: JobQueue
) -> None:
    first, second = enqueue(client, b"k1", b"k2")
    take(queue, 10, 100, "w1")
    queue.settle("w1", [Settlement(first, "ack")])
    assert queue.extend("w1", [first, second], 30_000) == 1
    assert queue.extend("w2", [second], 30_000) == 0  # not w2's to renew
    time.sleep(0.2)
    assert queue.requeue_lapsed() == (0, 0)
    assert queue.counts() == {"ready": 0, "leased": 1, "dead": 0}

"""A fleet of `expiryd work` processes and no `run` daemon: a worker killed with a batch
in hand leaves its lease to lapse, and a surviving worker hands the jobs out again and
runs them."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import redis

from expiryd.redis.keyspace import Keyspace
from expiryd.redis.ledger import Ledger, Op, Step
from tests.e2e.conftest import REPO, write_config
from tests.support.daemon import DaemonProcess
from tests.support.servers import RedisServer

BODY = """
[worker]
lease_seconds = 2
concurrency = 1

[[routes]]
pattern = "t:{n}"
handler = "tests.support.hooks:record_span"
"""
JOBS = 4
KEYSPACE = Keyspace("expiryd:", 15)


def queue_jobs(client: redis.Redis, count: int) -> None:
    """Claim expiries as a `run` daemon's dispatcher would, with none running."""
    steps = [Step(Op.CLAIM, f"t:{n}".encode()) for n in range(count)]
    assert all(Ledger(client, KEYSPACE).apply(steps).replies)


def test_a_killed_work_process_s_jobs_are_run_by_another_without_a_run_daemon(
    tmp_path: Path, sqlite_url: str, redis_db: RedisServer
) -> None:
    out = tmp_path / "spans.jsonl"
    config = write_config(tmp_path / "work.toml", redis_db.url(), sqlite_url, BODY)
    env = {"HOOK_OUT": str(out), "PYTHONPATH": str(REPO)}
    client = redis_db.client()
    # The first worker's handler would sleep a minute: it holds the batch when killed.
    # The second starts once the batch is held, so which one holds it is known.
    doomed = DaemonProcess(config, command="work", env={**env, "HOOK_SLEEP": "60"})
    survivor: DaemonProcess | None = None
    try:
        doomed.wait_for_event("expiryd.started")
        queue_jobs(client, JOBS)
        doomed.wait_for(lambda: client.zcard(KEYSPACE.leases) == JOBS, 10, "a leased batch")
        survivor = DaemonProcess(config, command="work", env={**env, "HOOK_SLEEP": "0"})
        survivor.wait_for_event("expiryd.started")
        doomed.stop(signal.SIGKILL)

        # The lease lapses within 2 s; the survivor looks for lapses once a second.
        handled = survivor.wait_for_event("expiry.handled", JOBS, timeout=8)
        assert survivor.events("jobs.requeued")
        assert {line["outcome"] for line in handled} == {"applied"}
    finally:
        doomed.stop(signal.SIGKILL)
        if survivor is not None:
            assert survivor.stop() == 0

    calls = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(c["key"] for c in calls) == [f"t:{n}" for n in range(JOBS)]  # each once
    assert {c["pid"] for c in calls} == {survivor.process.pid}
    ks = KEYSPACE
    left = [client.zcard(ks.ready), client.zcard(ks.leases)]
    left += [client.hlen(ks.jobs), client.hlen(ks.owners)]
    client.close()
    assert left == [0, 0, 0, 0], "queue at the end (ready, leased, records, owners)"

"""More than one batch at a time: `[worker] concurrency` in one daemon, and `expiryd work`
processes that drain the same queue without listening."""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.conftest import REPO, StartDaemon, assert_queue_settled, write_config
from tests.support.daemon import DaemonProcess, setex
from tests.support.servers import RedisServer

SPANS = '[[routes]]\npattern = "t:{n}"\nhandler = "tests.support.hooks:record_span"\n'


def spans(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_concurrency_runs_that_many_batches_at_once(
    tmp_path: Path, sqlite_url: str, redis_db: RedisServer, start_daemon: StartDaemon
) -> None:
    out = tmp_path / "spans.jsonl"
    body = "[worker]\nbatch_size = 1\nconcurrency = 3\n" + SPANS
    daemon = start_daemon(sqlite_url, body, env={"HOOK_OUT": str(out), "HOOK_SLEEP": "2"})
    client = redis_db.client()
    for n in range(3):
        setex(client, f"t:{n}", 1)
    daemon.wait_for_event("expiry.handled", 3, timeout=30)

    calls = spans(out)
    assert sorted(c["key"] for c in calls) == ["t:0", "t:1", "t:2"]
    # Each call sleeps 2 s: one worker would run them one after another.
    assert max(c["began"] for c in calls) < min(c["ended"] for c in calls)  # type: ignore[type-var]
    assert_queue_settled(redis_db, [daemon])


def test_work_processes_drain_the_queue_beside_run_without_listening(
    tmp_path: Path, sqlite_url: str, redis_db: RedisServer, start_daemon: StartDaemon
) -> None:
    out = tmp_path / "spans.jsonl"
    env = {"HOOK_OUT": str(out), "HOOK_SLEEP": "1", "PYTHONPATH": str(REPO)}
    body = "[worker]\nbatch_size = 1\n" + SPANS
    runner = start_daemon(sqlite_url, body, env=env)
    config = write_config(tmp_path / "work.toml", redis_db.url(), sqlite_url, body)
    worker = DaemonProcess(config, command="work", env=env)
    try:
        worker.wait_for_event("expiryd.started")
        client = redis_db.client()
        for n in range(6):
            setex(client, f"t:{n}", 1)
        worker.wait_for(
            lambda: len(runner.handled()) + len(worker.handled()) == 6, 40, "6 expiries"
        )
    finally:
        assert worker.stop() == 0

    calls = spans(out)
    assert sorted(c["key"] for c in calls) == [f"t:{n}" for n in range(6)]  # each once
    assert {c["pid"] for c in calls} == {runner.process.pid, worker.process.pid}
    assert not worker.events("listener.subscribed") and not worker.events("ledger.synced")
    (stopped,) = worker.events("expiryd.stopped")
    assert stopped["applied"] == len(worker.handled()) > 0
    assert_queue_settled(redis_db, [runner, worker])

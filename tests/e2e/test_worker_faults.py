"""The worker under faults: handlers that raise anything, jobs that cannot be parsed, a
daemon killed with a job in hand, a call longer than the lease, a stop that outlasts the
grace, a thread that dies."""

from __future__ import annotations

import json
import signal
import time
from datetime import datetime
from pathlib import Path

import msgpack

from tests.e2e.conftest import StartDaemon, assert_queue_settled
from tests.support.daemon import DaemonProcess, setex
from tests.support.servers import RedisServer
from tests.support.shop import add_calls, calls

RAISE = '[[routes]]\npattern = "raise:{kind}"\nhandler = "tests.support.hooks:raise_named"\n'
ACCEPT = '[[routes]]\npattern = "t:{n}"\nhandler = "tests.support.hooks:accept"\n'
SLOW = '[[routes]]\npattern = "slow:{n}"\nhandler = "tests.support.hooks:record_call_slowly"\n'


def lease_a_slow_job(
    start_daemon: StartDaemon, redis_db: RedisServer, url: str, body: str, sleep: str
) -> DaemonProcess:
    """A daemon whose handler takes `sleep` seconds, holding the lease of one job."""
    add_calls(url)
    daemon = start_daemon(url, body, env={"HOOK_DATABASE_URL": url, "HOOK_SLEEP": sleep})
    setex(redis_db.client(), "slow:1", 1)
    daemon.wait_for(lambda: redis_db.client().zcard("expiryd:jobs:leases") == 1, 10, "a lease")
    return daemon


def test_a_handler_raising_systemexit_or_the_like_is_an_outcome_not_a_dead_worker(
    sqlite_url: str, redis_db: RedisServer, start_daemon: StartDaemon
) -> None:
    body = "[retry]\nattempts = 1\n" + RAISE + ACCEPT
    daemon = start_daemon(sqlite_url, body)
    client = redis_db.client()
    for kind in ("SystemExit", "KeyboardInterrupt", "CancelledError", "GeneratorExit"):
        setex(client, f"raise:{kind}", 1)
    time.sleep(1.5)
    setex(client, "t:after", 1)

    lines = daemon.wait_for_event("expiry.handled", 5, timeout=20)
    outcomes = {line["key"]: line["outcome"] for line in lines}
    assert outcomes.pop("t:after") == "applied"
    assert set(outcomes.values()) == {"dead"}
    assert daemon.running and not daemon.events("thread.died")
    assert_queue_settled(redis_db, [daemon], dead=4)


def test_a_thread_that_ends_takes_the_daemon_down_with_a_traceback_in_json(
    sqlite_url: str, start_daemon: StartDaemon
) -> None:
    body = '[[routes]]\npattern = "t:{n}"\nhandler = "tests.support.sabotage:accept"\n'
    daemon = start_daemon(sqlite_url, body, wait=False)
    daemon.wait_for(lambda: not daemon.running, 20, "the daemon to exit")
    assert daemon.stop() == 70
    (died,) = daemon.events("thread.died")
    assert died["thread"] == "sweeper" and died["level"] == "critical"
    assert "Traceback" in died["exception"] and "sabotaged" in died["exception"]
    assert "Traceback" not in daemon.stderr


UNREADABLE = {
    "c" * 32: b"not a packed record",
    "d" * 32: msgpack.packb(["k"] * 9),  # nine fields, most of the wrong type
    "e" * 32: msgpack.packb(["t:e", "event", 1, False, False, 0, 0, "", None]),
    "f" * 32: msgpack.packb(["t:f", "event", 1, False, False, True, 0, "", False]),
}


def test_jobs_with_numbers_packed_as_floats_or_unreadable_records_are_settled(
    sqlite_url: str, redis_db: RedisServer, start_daemon: StartDaemon
) -> None:
    """Lua packs a number as a float when it is not whole; a deadline past the year 9999
    fits no date; a record something else wrote is dead-lettered whole, by a settle that
    does not stop halfway (the queue's records and owners are checked at the end)."""
    client = redis_db.client()
    for job_id, deadline in (("a" * 32, 1.735e12), ("b" * 32, 300000000000000)):
        record = [f"t:{job_id[0]}", "event", 1.7e12, deadline, False, 0.0, 0, "", False]
        client.hset("expiryd:jobs", job_id, msgpack.packb(record))
        client.zadd("expiryd:jobs:ready", {job_id: 0})
    for job_id, record in UNREADABLE.items():
        client.hset("expiryd:jobs", job_id, record)
        client.zadd("expiryd:jobs:ready", {job_id: 0})
    daemon = start_daemon(sqlite_url, ACCEPT)

    handled = daemon.wait_for_event("expiry.handled", 2 + len(UNREADABLE))
    lines = {line["expiry_id"]: line for line in handled}
    assert lines["a" * 32]["deadline"] == "2024-12-24T00:26:40.000+00:00"
    assert lines["b" * 32]["deadline"] is None and lines["b" * 32]["outcome"] == "applied"
    for job_id in UNREADABLE:
        assert lines[job_id]["outcome"] == "dead"
        assert "not one expiryd wrote" in lines[job_id]["error"]
    assert not daemon.events("worker.crashed")
    assert_queue_settled(redis_db, [daemon], dead=len(UNREADABLE))


def test_a_daemon_killed_with_a_job_in_hand_uses_up_no_attempt(
    sqlite_url: str, redis_db: RedisServer, start_daemon: StartDaemon
) -> None:
    """With attempts = 1, the job of a killed worker is handed out again when its lease
    lapses (observed), and runs to completion once."""
    body = "[worker]\nlease_seconds = 2\n[retry]\nattempts = 1\n" + SLOW
    first = lease_a_slow_job(start_daemon, redis_db, sqlite_url, body, sleep="3")
    first.stop(signal.SIGKILL)

    env = {"HOOK_DATABASE_URL": sqlite_url, "HOOK_SLEEP": "0"}
    second = start_daemon(sqlite_url, body, env=env)
    (line,) = second.wait_for_event("expiry.handled", timeout=20)
    assert second.events("jobs.requeued")
    assert (line["outcome"], line["attempt"]) == ("applied", 1)
    time.sleep(3)
    assert [(key, attempt) for key, _, attempt in calls(sqlite_url)] == [("slow:1", 1)]
    assert_queue_settled(redis_db, [first, second])


def test_a_live_worker_keeps_its_lease_through_a_call_longer_than_the_lease(
    sqlite_url: str, redis_db: RedisServer, start_daemon: StartDaemon
) -> None:
    """One handler call of 5 s under a 2 s lease: the renewer renews it while the call
    runs, so the job is never handed out again and runs once."""
    body = "[worker]\nlease_seconds = 2\nconcurrency = 2\n" + SLOW
    daemon = lease_a_slow_job(start_daemon, redis_db, sqlite_url, body, sleep="5")
    (line,) = daemon.wait_for_event("expiry.handled", timeout=20)
    assert (line["outcome"], line["attempt"]) == ("applied", 1)
    time.sleep(2.5)  # past the lease, were it not renewed
    assert not daemon.events("jobs.requeued")
    assert [(key, attempt) for key, _, attempt in calls(sqlite_url)] == [("slow:1", 1)]
    assert_queue_settled(redis_db, [daemon])


def test_a_pending_retry_survives_a_restart_and_runs_as_the_next_attempt(
    sqlite_url: str, redis_db: RedisServer, start_daemon: StartDaemon
) -> None:
    add_calls(sqlite_url)
    body = (
        "[retry]\nbase_seconds = 4\ncap_seconds = 4\n"
        '[[routes]]\npattern = "once:{n}"\nhandler = "tests.support.hooks:fail_once_then_record"\n'
    )
    env = {"HOOK_DATABASE_URL": sqlite_url}
    first = start_daemon(sqlite_url, body, env=env)
    setex(redis_db.client(), "once:1", 1)
    (retry,) = first.wait_for_event("expiry.handled", timeout=15)
    assert retry["outcome"] == "retry"
    first.stop()

    second = start_daemon(sqlite_url, body, env=env)
    (line,) = second.wait_for_event("expiry.handled", timeout=20)
    assert (line["outcome"], line["attempt"], line["expiry_id"]) == (
        "applied", 2, retry["expiry_id"],
    )  # fmt: skip
    assert calls(sqlite_url) == [("once:1", retry["expiry_id"], 2)]
    assert_queue_settled(redis_db, [first, second])


def test_a_custom_handler_receives_the_id_attempt_and_deadline(
    sqlite_url: str, redis_db: RedisServer, start_daemon: StartDaemon, tmp_path: Path
) -> None:
    out = tmp_path / "received.jsonl"
    body = '[[routes]]\npattern = "hook:{name}"\nhandler = "tests.support.hooks:save_value"\n'
    daemon = start_daemon(sqlite_url, body, env={"HOOK_OUT": str(out)})
    setex(redis_db.client(), "hook:a", 1)
    (line,) = daemon.wait_for_event("expiry.handled", timeout=15)
    received = json.loads(out.read_text())
    assert received["id"] == line["expiry_id"] and len(received["id"]) == 32
    assert received["attempt"] == 1
    assert datetime.fromisoformat(received["deadline"]) == datetime.fromisoformat(line["deadline"])
    assert_queue_settled(redis_db, [daemon])


def test_a_stop_that_outlasts_the_grace_ends_within_it(
    sqlite_url: str, redis_db: RedisServer, start_daemon: StartDaemon
) -> None:
    body = "[worker]\ngrace_seconds = 2\nlease_seconds = 30\n" + SLOW
    daemon = lease_a_slow_job(start_daemon, redis_db, sqlite_url, body, sleep="20")
    asked = time.monotonic()
    assert daemon.stop(signal.SIGTERM, timeout=10) == 0
    assert time.monotonic() - asked < 4
    assert daemon.events("expiryd.stopped")[0]["unfinished"] == 1
    left_on_purpose = ("expiryd:jobs:leases", "expiryd:jobs", "expiryd:jobs:owners")
    redis_db.client().delete(*left_on_purpose)
    assert_queue_settled(redis_db, [daemon])


FAST = '[[routes]]\npattern = "fast:{n}"\nhandler = "tests.support.hooks:record_call"\n'
SLOW_THEN_FAST = {"a" * 32: "slow:1", "b" * 32: "fast:1"}


def run_slow_then_fast(
    start_daemon: StartDaemon, redis_db: RedisServer, url: str, body: str, sleep: str
) -> DaemonProcess:
    """Two jobs ready before the daemon starts, so one worker takes both in one batch: a
    slow group first (`sleep` seconds), then a fast one. Returns once the slow one runs."""
    add_calls(url)
    client = redis_db.client()
    for score, (job_id, key) in enumerate(SLOW_THEN_FAST.items()):
        record = [key, "event", 1, False, False, 0, 0, "", False]
        client.hset("expiryd:jobs", job_id, msgpack.packb(record))
        client.zadd("expiryd:jobs:ready", {job_id: score})
    env = {"HOOK_DATABASE_URL": url, "HOOK_SLEEP": sleep}
    daemon = start_daemon(url, body + SLOW + FAST, env=env)
    daemon.wait_for(lambda: started(redis_db, "a" * 32), 10, "the slow group to start")
    return daemon


def started(redis_db: RedisServer, job_id: str) -> bool:
    owner = redis_db.client().hget("expiryd:jobs:owners", job_id) or b""
    return owner.endswith(b" +")


def test_a_worker_that_lost_its_lease_runs_no_more_of_its_batch(
    sqlite_url: str, redis_db: RedisServer, start_daemon: StartDaemon
) -> None:
    """While the slow group runs, the fast job's lease passes to someone else (as after
    Redis was out of reach for longer than the lease). The worker notices at its next
    heartbeat and does not run the fast job after the slow one: it runs once, when its
    lease has lapsed and it was handed out again."""
    body = "[worker]\nlease_seconds = 2\nconcurrency = 1\n"
    daemon = run_slow_then_fast(start_daemon, redis_db, sqlite_url, body, sleep="5")
    redis_db.client().hset("expiryd:jobs:owners", "b" * 32, "someone-else -")

    daemon.wait_for_event("expiry.handled", 2, timeout=20)
    time.sleep(2)  # room for a second run of the fast job, were there one
    assert len(daemon.handled()) == 2
    (lost,) = daemon.events("lease.lost")
    assert (lost["jobs"], lost["held"]) == (1, 1)
    assert daemon.events("batch.slow")[0]["jobs"] == 1
    assert daemon.events("jobs.requeued")
    assert sorted(key for key, _, _ in calls(sqlite_url)) == ["fast:1", "slow:1"]
    assert_queue_settled(redis_db, [daemon])


def test_a_stop_puts_back_the_groups_not_started_using_up_nothing(
    sqlite_url: str, redis_db: RedisServer, start_daemon: StartDaemon
) -> None:
    body = "[worker]\nconcurrency = 1\n"
    first = run_slow_then_fast(start_daemon, redis_db, sqlite_url, body, sleep="2")
    assert first.stop(signal.SIGTERM) == 0
    assert [key for key, _, _ in calls(sqlite_url)] == ["slow:1"]
    client = redis_db.client()
    assert client.zscore("expiryd:jobs:ready", "b" * 32) is not None
    assert client.hlen("expiryd:jobs:owners") == 0

    env = {"HOOK_DATABASE_URL": sqlite_url}
    second = start_daemon(sqlite_url, body + SLOW + FAST, env=env)
    (line,) = second.wait_for_event("expiry.handled")
    assert (line["key"], line["attempt"], line["outcome"]) == ("fast:1", 1, "applied")
    assert not second.events("jobs.requeued")
    assert_queue_settled(redis_db, [first, second])


POISON = '[[routes]]\npattern = "p:{n}"\nhandler = "tests.support.hooks:exit_on_poison"\n'


def test_a_job_that_kills_its_worker_is_found_out_and_the_rest_of_its_group_runs_once(
    sqlite_url: str, redis_db: RedisServer, start_daemon: StartDaemon
) -> None:
    """A handler ends the whole process on the first key of a group of four. The group
    was marked as started, so all four are charged a lapse; from then on they run one at
    a time, the poison first (and alone charged), until its fifth lapse dead-letters it
    and the three others run, once."""
    add_calls(sqlite_url)
    client = redis_db.client()
    for n, key in enumerate(("p:poison", "p:1", "p:2", "p:3")):
        record = [key, "event", 1, False, False, 0, 0, "", False]
        client.hset("expiryd:jobs", f"{n}" * 32, msgpack.packb(record))
        client.zadd("expiryd:jobs:ready", {f"{n}" * 32: n})
    body = "[worker]\nlease_seconds = 1\nconcurrency = 1\n" + POISON
    env = {"HOOK_DATABASE_URL": sqlite_url}
    for _ in range(5):
        killed = start_daemon(sqlite_url, body, env=env, wait=False)
        killed.wait_for(lambda d=killed: not d.running, 20, "the poison to end the daemon")
    last = start_daemon(sqlite_url, body, env=env)
    lines = {line["key"]: line for line in last.wait_for_event("expiry.handled", 4)}
    assert lines["p:poison"]["outcome"] == "dead"
    assert "stopped 5 times" in lines["p:poison"]["error"]
    assert {lines[k]["outcome"] for k in ("p:1", "p:2", "p:3")} == {"applied"}
    assert sorted(key for key, _, _ in calls(sqlite_url)) == ["p:1", "p:2", "p:3"]
    assert_queue_settled(redis_db, [last], dead=1)


def test_the_unit_gives_the_daemon_more_time_to_stop_than_its_grace() -> None:
    from expiryd import defaults

    unit = (Path(__file__).parents[2] / "systemd" / "expiryd.service").read_text()
    (timeout,) = [line for line in unit.splitlines() if line.startswith("TimeoutStopSec=")]
    assert int(timeout.split("=")[1].rstrip("s")) >= defaults.GRACE_SECONDS + 10


def test_orders_whose_number_is_not_plain_digits_are_skipped_on_an_integer_column(
    sqlite_url: str, redis_db: RedisServer, start_daemon: StartDaemon
) -> None:
    from sqlalchemy import text

    from tests.support.shop import engine_for

    engine = engine_for(sqlite_url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE orders (order_sn INTEGER, status INTEGER)"))
        connection.execute(text("INSERT INTO orders VALUES (7, 0), (1000, 0)"))
    engine.dispose()
    daemon = start_daemon(sqlite_url)
    client = redis_db.client()
    for number in ("٧", "1_000", "+7"):
        setex(client, f"order:cancel:{number}", 1)
    lines = daemon.wait_for_event("expiry.handled", 3, timeout=15)
    assert {line["outcome"] for line in lines} == {"skipped"}
    assert_queue_settled(redis_db, [daemon])

"""Durable work: crashes, outages, dead letters, several daemons, bad input. Daemons run
as subprocesses against real redis-server and MariaDB. "Exactly once" is read three ways:
an UPDATE trigger writes one audit row per changed order; the handler writes one row per
call in the same transaction, so a second run shows even where the status guard makes it
change nothing; and every daemon's log has one applied-or-skipped line per key."""

from __future__ import annotations

import signal
import time
from collections import Counter

import pymysql
import pytest

from tests.e2e.conftest import StartDaemon
from tests.support.daemon import DaemonProcess, psetex_many, run_cli, setex
from tests.support.servers import MariaDB, RedisServer
from tests.support.shop import (
    ORDER_ROUTES,
    add_audit,
    add_calls,
    audit,
    calls,
    create_orders,
    statuses,
)

LEASE_SECONDS = 3
BATCH_SIZE, CONCURRENCY = 100, 2
IN_HAND = BATCH_SIZE * CONCURRENCY
"""The most jobs a daemon holds: a kill -9 may leave that many to run again."""
FAST = (
    f"[worker]\nlease_seconds = {LEASE_SECONDS}\ngrace_seconds = 10\n"
    f"batch_size = {BATCH_SIZE}\nconcurrency = {CONCURRENCY}\n[retry]\nbase_seconds = 0.5\n"
)
RECORDED = (
    '[[routes]]\npattern = "order:cancel:{order_sn}"\n'
    'handler = "tests.support.hooks:cancel_and_record"\n'
)
"""The cancel route, with a handler that also records each call."""


def shop(url: str, count: int) -> list[str]:
    numbers = [f"SN{n:06d}" for n in range(count)]
    create_orders(url, dict.fromkeys(numbers, 0))
    add_audit(url)
    add_calls(url)
    return numbers


def start_recorded(start_daemon: StartDaemon, url: str) -> DaemonProcess:
    return start_daemon(url, FAST + RECORDED, env={"HOOK_DATABASE_URL": url})


def cancel(client: object, numbers: list[str], ttl_ms: int = 2000) -> None:
    psetex_many(client, [f"order:cancel:{n}" for n in numbers], ttl_ms)  # type: ignore[arg-type]


def wait_for_audit(url: str, count: int, timeout: float = 120) -> list[str]:
    deadline = time.monotonic() + timeout
    while len(changed := audit(url)) < count:
        assert time.monotonic() < deadline, f"{len(changed)} of {count} orders changed"
        time.sleep(0.25)
    # A second run would come after a lease lapsed: wait out more than one.
    time.sleep(LEASE_SECONDS + 2)
    return audit(url)


def assert_exactly_once(
    url: str,
    numbers: list[str],
    daemons: list[DaemonProcess],
    rerun_at_most: int = 0,
    recorded: bool = True,
) -> None:
    """Every order changed once. Every key's handler ran once, except that up to
    `rerun_at_most` keys may have run twice: the batch a killed daemon had in hand."""
    changed = wait_for_audit(url, len(numbers))
    twice = [n for n, times in Counter(changed).items() if times > 1]
    assert twice == [], f"changed more than once: {twice[:5]}"
    assert sorted(changed) == sorted(numbers)
    assert set(statuses(url).values()) == {3}
    if recorded:
        runs = Counter(key for key, _, _ in calls(url))
        assert set(runs) == {f"order:cancel:{n}" for n in numbers}
        rerun = {key: n for key, n in runs.items() if n > 1}
        assert len(rerun) <= rerun_at_most and all(n == 2 for n in rerun.values()), rerun
    if not rerun_at_most:
        lines = Counter(
            line["key"]
            for daemon in daemons
            for line in daemon.handled()
            if line["outcome"] in ("applied", "skipped")
        )
        assert set(lines.values()) == {1}, [k for k, n in lines.items() if n != 1][:5]


def applied(daemon: DaemonProcess) -> int:
    return sum(1 for line in daemon.handled() if line["outcome"] == "applied")


def test_kill_9_in_the_middle_of_10000_expiries_then_restart(
    mysql_url: str, redis_db: RedisServer, start_daemon: StartDaemon
) -> None:
    numbers = shop(mysql_url, 10_000)
    daemon = start_recorded(start_daemon, mysql_url)
    cancel(redis_db.client(), numbers)
    daemon.wait_for(lambda: applied(daemon) >= 2000, 60, "2000 applied")
    daemon.stop(signal.SIGKILL)

    restarted = start_recorded(start_daemon, mysql_url)
    assert_exactly_once(mysql_url, numbers, [daemon, restarted], rerun_at_most=IN_HAND)
    assert restarted.events("jobs.requeued"), "the killed daemon's lease never lapsed"
    assert not any(line["outcome"] == "dead" for line in restarted.handled())


def test_mariadb_down_for_10s_during_a_burst_is_ridden_out_by_retries(
    mariadb: MariaDB, mysql_url: str, redis_db: RedisServer, start_daemon: StartDaemon
) -> None:
    numbers = shop(mysql_url, 2000)
    daemon = start_recorded(start_daemon, mysql_url)
    cancel(redis_db.client(), numbers)
    daemon.wait_for(lambda: applied(daemon) >= 300, 60, "300 applied")
    mariadb.stop()
    time.sleep(10)
    mariadb.start()

    # A commit the server made just before it went down, whose reply never came, is
    # retried: its call runs again (changing nothing), at most once per worker.
    assert_exactly_once(mysql_url, numbers, [daemon], rerun_at_most=CONCURRENCY)
    retried = {line["key"] for line in daemon.handled() if line["outcome"] == "retry"}
    rerun = {key for key, n in Counter(key for key, _, _ in calls(mysql_url)).items() if n > 1}
    assert rerun <= retried
    outcomes = Counter(line["outcome"] for line in daemon.handled())
    assert outcomes["retry"] > 0
    assert outcomes["dead"] == 0
    retry = next(line for line in daemon.handled() if line["outcome"] == "retry")
    assert "2003" in retry["error"] or "2013" in retry["error"] or "2006" in retry["error"]


def test_a_missing_column_is_dead_lettered_then_replayed_after_the_fix(
    database_url: str, redis_db: RedisServer, start_daemon: StartDaemon
) -> None:
    mysql_url = database_url  # MariaDB, then SQLite
    numbers = shop(mysql_url, 4)
    bad = '[[routes]]\npattern = "order:close:{order_sn}"\nhandler = "sql"\nsql = "UPDATE orders SET state = 3 WHERE order_sn = :order_sn"\n'  # noqa: E501
    good = bad.replace("SET state", "SET status")
    daemon = start_daemon(mysql_url, FAST + bad + ORDER_ROUTES)
    client = redis_db.client()
    for number in numbers[:2]:
        setex(client, f"order:close:{number}", 1)
    setex(client, f"order:cancel:{numbers[2]}", 1)

    lines = daemon.wait_for_event("expiry.handled", 3)
    dead = [line for line in lines if line["outcome"] == "dead"]
    missing = "no such column: state" if "sqlite" in mysql_url else "Unknown column 'state'"
    assert len(dead) == 2 and all(missing in line["error"] for line in dead), dead
    assert all(line["attempt"] == 1 for line in dead)
    assert statuses(mysql_url)[numbers[2]] == 3
    listed = run_cli("dead", "list", "--config", str(daemon.config))
    assert listed.stdout.count(missing) == 2
    daemon.stop()

    fixed = start_daemon(mysql_url, FAST + good + ORDER_ROUTES)
    replay = run_cli("dead", "replay", "--all", "--config", str(fixed.config))
    assert replay.stdout.strip() == "2 dead letters queued again"
    fixed.wait_for_event("expiry.handled", 2)
    assert sorted(audit(mysql_url)) == numbers[:3]
    assert run_cli("dead", "list", "--config", str(fixed.config)).stdout == ""


@pytest.mark.parametrize("kill_one", [False, True])
def test_two_daemons_share_10000_expiries_each_applied_once(
    mysql_url: str, redis_db: RedisServer, start_daemon: StartDaemon, kill_one: bool
) -> None:
    numbers = shop(mysql_url, 10_000)
    first = start_recorded(start_daemon, mysql_url)
    second = start_recorded(start_daemon, mysql_url)
    cancel(redis_db.client(), numbers)
    if kill_one:
        first.wait_for(lambda: applied(first) + applied(second) >= 5000, 60, "half applied")
        first.stop(signal.SIGKILL)

    assert_exactly_once(
        mysql_url, numbers, [first, second], rerun_at_most=IN_HAND if kill_one else 0
    )
    assert applied(first) > 0 and applied(second) > 0


def test_sigterm_in_a_burst_exits_0_within_the_grace_and_loses_nothing(
    mysql_url: str, redis_db: RedisServer, start_daemon: StartDaemon
) -> None:
    numbers = shop(mysql_url, 5000)
    daemon = start_recorded(start_daemon, mysql_url)
    cancel(redis_db.client(), numbers)
    daemon.wait_for(lambda: applied(daemon) >= 1000, 60, "1000 applied")
    asked = time.monotonic()
    assert daemon.stop(signal.SIGTERM, timeout=10) == 0
    assert time.monotonic() - asked < 10
    stopped = daemon.events("expiryd.stopped")[0]
    assert stopped["unfinished"] == 0 and stopped["unapplied_events"] == 0

    restarted = start_recorded(start_daemon, mysql_url)
    assert_exactly_once(mysql_url, numbers, [daemon, restarted])


@pytest.mark.dead_letters(2)
def test_bad_input_of_every_kind_in_one_run_and_valid_keys_still_work(
    mysql_url: str, redis_db: RedisServer, start_daemon: StartDaemon
) -> None:
    numbers = shop(mysql_url, 2)
    body = (
        FAST
        + '[[routes]]\npattern = "boom:{x}"\nhandler = "tests.support.hooks:explode"\n'
        + "retry = { attempts = 1 }\n"
        + '[[routes]]\npattern = "broken:{order_sn}"\nhandler = "sql"\n'
        + 'sql = "UPDATE nowhere SET a = 1 WHERE b = :order_sn"\n'
        + ORDER_ROUTES
    )
    daemon = start_daemon(mysql_url, body)
    client = redis_db.client()
    bad_keys: list[bytes] = [
        b"order:cancel:",
        b"order:\xff\xfe:\x00",
        b"k" * 1_048_576,
        b"no route here",
        b"boom:1",
        b"broken:SN000000",
        b"order:cancel:" + "订单🙂".encode(),
    ]
    for key in bad_keys:
        client.execute_command("SETEX", key, 1, "x")
    time.sleep(1.5)
    setex(client, f"order:cancel:{numbers[0]}", 1)

    lines = daemon.wait_for_event("expiry.handled", len(bad_keys) + 1, timeout=30)
    outcomes = Counter(line["outcome"] for line in lines)
    assert outcomes == {"unrouted": 4, "dead": 2, "skipped": 1, "applied": 1}
    assert lines[-1]["key"] == f"order:cancel:{numbers[0]}"
    assert audit(mysql_url) == [numbers[0]]
    assert daemon.process.poll() is None


def test_a_locked_order_waits_for_its_lock_and_delays_no_other(
    mariadb: MariaDB, mysql_url: str, redis_db: RedisServer, start_daemon: StartDaemon
) -> None:
    """A payment in progress holds one order's row: the rest of its batch commits at
    once, and that one is applied once after the lock is gone, using up no attempt."""
    numbers = shop(mysql_url, 100)
    locked = numbers[5]
    daemon = start_daemon(mysql_url, FAST + ORDER_ROUTES)
    holder = pymysql.connect(
        unix_socket=mariadb.socket, user="root", database=mysql_url.rsplit("/", 1)[1]
    )
    try:
        with holder.cursor() as cursor:
            cursor.execute("BEGIN")
            cursor.execute("SELECT * FROM orders WHERE order_sn = %s FOR UPDATE", (locked,))
            cancel(redis_db.client(), numbers, ttl_ms=500)
            changed = wait_for_audit(mysql_url, 99, timeout=30)
            assert locked not in changed and len(changed) == 99
            waiting = [line for line in daemon.handled() if line["order_sn"] == locked]
            assert waiting and {line["outcome"] for line in waiting} == {"retry"}
            assert {line["attempt"] for line in waiting} == {1}
            holder.rollback()
    finally:
        holder.close()
    assert_exactly_once(mysql_url, numbers, [daemon], recorded=False)
    final = [line for line in daemon.handled() if line["order_sn"] == locked][-1]
    assert (final["outcome"], final["attempt"]) == ("applied", 1)


@pytest.mark.dead_letters(1)
def test_a_statement_that_hangs_fails_before_its_lease_lapses(
    mysql_url: str, redis_db: RedisServer, start_daemon: StartDaemon
) -> None:
    numbers = shop(mysql_url, 1)
    hangs = (
        '[[routes]]\npattern = "hang:{order_sn}"\nhandler = "sql"\nretry = { attempts = 1 }\n'
        'sql = "UPDATE orders SET status = 3 WHERE order_sn = :order_sn AND SLEEP(20) = 0"\n'
    )
    daemon = start_daemon(mysql_url, FAST + hangs + ORDER_ROUTES)
    setex(redis_db.client(), f"hang:{numbers[0]}", 1)
    (line,) = daemon.wait_for_event("expiry.handled", timeout=15)
    assert line["outcome"] == "dead" and "2013" in line["error"]  # lost: timed out
    assert not daemon.events("jobs.requeued")
    assert statuses(mysql_url) == {numbers[0]: 0}

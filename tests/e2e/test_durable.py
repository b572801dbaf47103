"""Durable work: crashes, outages, lost COMMIT replies, dead letters, several daemons, bad
input. Daemons run as subprocesses against real redis-server and MariaDB.

The cancel route runs two ways. The recording hook (`tests.support.hooks:cancel_and_record`)
changes one order per transaction and writes a row per call beside it, so a second run
shows even where the status guard makes it change nothing. The default route
(`orders.cancel`) changes a group of orders in one transaction with their ids in the
inbox (`expiryd_applied`), so a second run finds them there and runs nothing.

"Exactly once" is read from the database (an UPDATE trigger writes one audit row per
changed order; the calls, or the inbox, one row per run or per expiry) and from every
daemon's log (see `assert_logged_once`)."""

from __future__ import annotations

import signal
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import pymysql
import pytest
import redis

from tests.e2e.conftest import StartDaemon, assert_queue_settled
from tests.support.daemon import DaemonProcess, Line, psetex_many, run_cli, setex
from tests.support.proxy import FaultProxy
from tests.support.servers import MariaDB, RedisServer
from tests.support.shop import (
    ORDER_ROUTES,
    add_audit,
    add_calls,
    audit,
    calls,
    create_orders,
    rows,
    statuses,
)

LEASE_SECONDS = 3
BATCH_SIZE, CONCURRENCY = 100, 2
IN_HAND = BATCH_SIZE * CONCURRENCY
"""The most jobs a daemon holds: a kill -9 may leave that many to run again."""
LEASES = "expiryd:jobs:leases"


def worker(concurrency: int = CONCURRENCY) -> str:
    return (
        f"[worker]\nlease_seconds = {LEASE_SECONDS}\ngrace_seconds = 10\n"
        f"batch_size = {BATCH_SIZE}\nconcurrency = {concurrency}\n[retry]\nbase_seconds = 0.5\n"
    )


FAST = worker()
RECORDED = (
    '[[routes]]\npattern = "order:cancel:{order_sn}"\n'
    'handler = "tests.support.hooks:cancel_and_record"\n'
)
"""The cancel route, with a handler that also records each call."""


@dataclass(frozen=True)
class Cancelling:
    """How the cancel route is handled in a test, and the size of its burst."""

    routes: str
    recorded: bool
    """The recording hook, one expiry per transaction; else `orders.cancel` and its inbox."""
    orders: int


HOOK = Cancelling(RECORDED, recorded=True, orders=10_000)
BATCH = Cancelling(ORDER_ROUTES, recorded=False, orders=3000)
BOTH = [pytest.param(HOOK, id="recording-hook"), pytest.param(BATCH, id="orders.cancel")]


def shop(url: str, count: int) -> list[str]:
    numbers = [f"SN{n:06d}" for n in range(count)]
    create_orders(url, dict.fromkeys(numbers, 0))
    add_audit(url)
    add_calls(url)
    return numbers


def start_recorded(start_daemon: StartDaemon, url: str) -> DaemonProcess:
    return start_cancelling(start_daemon, url, HOOK)


def start_cancelling(start_daemon: StartDaemon, url: str, how: Cancelling) -> DaemonProcess:
    return start_daemon(url, FAST + how.routes, env={"HOOK_DATABASE_URL": url})


def cancel(client: object, numbers: list[str], ttl_ms: int = 2000) -> None:
    psetex_many(client, [f"order:cancel:{n}" for n in numbers], ttl_ms)  # type: ignore[arg-type]


def wait_for_audit(url: str, count: int, timeout: float = 120, then: float = 0) -> list[str]:
    """The audit once it has `count` rows, and `then` seconds later."""
    deadline = time.monotonic() + timeout
    while len(changed := audit(url)) < count:
        assert time.monotonic() < deadline, f"{len(changed)} of {count} orders changed"
        time.sleep(0.25)
    time.sleep(then)
    return audit(url)


def kill_mid_burst(
    victim: DaemonProcess, client: redis.Redis, applied_so_far: Callable[[], int], at: int
) -> int:
    """SIGKILL `victim` once `at` expiries are applied, at a moment when jobs are leased
    (a batch in hand, maybe committed and not yet logged or settled); how many were
    applied then."""
    deadline = time.monotonic() + 60
    while applied_so_far() < at or not client.zcard(LEASES):
        assert victim.running, victim.output()
        assert time.monotonic() < deadline, f"{applied_so_far()} applied; no kill point"
        time.sleep(0.005)
    victim.stop(signal.SIGKILL)
    return applied_so_far()


def assert_exactly_once(
    redis_db: RedisServer,
    url: str,
    numbers: list[str],
    daemons: list[DaemonProcess],
    rerun_at_most: int = 0,
    recorded: bool = True,
) -> None:
    """Every order changed once, the queue settled (no job left to run again, none dead),
    and each key's outcome logged once across `daemons` (see `assert_logged_once`).
    `rerun_at_most`: how many keys may have been handled a second time (the batch a killed
    daemon had in hand, a group whose COMMIT's reply was lost)."""
    wait_for_audit(url, len(numbers))
    assert_queue_settled(redis_db, daemons)
    changed = audit(url)
    twice = [n for n, times in Counter(changed).items() if times > 1]
    assert twice == [], f"changed more than once: {twice[:5]}"
    assert sorted(changed) == sorted(numbers)
    assert set(statuses(url).values()) == {3}
    keys = {f"order:cancel:{n}" for n in numbers}
    assert_logged_once(url, keys, daemons, rerun_at_most, recorded)


def assert_logged_once(
    url: str, keys: set[str], daemons: list[DaemonProcess], rerun_at_most: int, recorded: bool
) -> None:
    """Each key's final `expiry.handled` lines (applied or skipped), across `daemons`.

    A run logs its outcome after its commit, so a daemon killed in between committed a
    key without logging it, and did not settle it: its lease lapses and another daemon
    handles it again. Lines for a key beyond one come only from such second handlings,
    at most `rerun_at_most` keys.

    With `orders.cancel` and its inbox, no statement runs twice: the second handling finds
    the id in the inbox and logs `applied` with `committed_by_attempt` (the attempt that
    committed, which the inbox holds; the same attempt after a lapsed lease, an earlier
    one after a lost reply). So per key: one row in the inbox; at most one line without
    `committed_by_attempt`, from the attempt the inbox names; and every line `applied`,
    since all orders start unpaid. A key may have no line without `committed_by_attempt`
    (its commit was never logged), but then has one with it.

    With the recording hook (no inbox), the second handling runs again: the status guard
    makes it change nothing and it logs `skipped`. So per key: one or two runs; at least
    one line and no more lines than runs (a run killed before its line wrote none); at
    most one `applied` line, and none only where the key ran twice (the run that changed
    the order never logged). No line carries `committed_by_attempt`."""
    lines: dict[str, list[Line]] = defaultdict(list)
    ids: dict[str, set[str]] = defaultdict(set)
    for daemon in daemons:
        for line in daemon.handled():
            ids[line["key"]].add(line["expiry_id"])
            if line["outcome"] in ("applied", "skipped"):
                lines[line["key"]].append(line)
    missing = sorted(keys - set(lines))
    assert missing == [], f"{len(missing)} keys never logged applied or skipped: {missing[:5]}"
    assert set(lines) == keys
    assert {len(i) for i in ids.values()} == {1}, "a key with two expiry ids"
    expiry_ids = {key: next(iter(ids[key])) for key in keys}
    if recorded:
        again = _assert_runs_logged(url, keys, lines)
    else:
        again = _assert_inbox_logged(url, expiry_ids, lines)
    example = lines[min(again)] if again else []
    assert len(again) <= rerun_at_most, f"{len(again)} keys handled twice, such as: {example}"


def _assert_runs_logged(url: str, keys: set[str], lines: dict[str, list[Line]]) -> set[str]:
    """The recording hook's rule (see `assert_logged_once`); the keys that ran twice."""
    runs = Counter(key for key, _, _ in calls(url))
    assert set(runs) == keys
    assert set(runs.values()) <= {1, 2}, [k for k, n in runs.items() if n > 2][:5]
    wrong = {}
    for key in keys:
        mine = lines[key]
        applied = sum(1 for line in mine if line["outcome"] == "applied")
        if not (
            1 <= len(mine) <= runs[key]
            and applied <= 1
            and (applied == 1 or runs[key] == 2)
            and not any("committed_by_attempt" in line for line in mine)
        ):
            wrong[key] = (runs[key], mine)
    assert not wrong, f"{len(wrong)} keys logged wrong (runs, lines): {list(wrong.items())[:3]}"
    return {key for key, n in runs.items() if n == 2}


def _assert_inbox_logged(
    url: str, expiry_ids: dict[str, str], lines: dict[str, list[Line]]
) -> set[str]:
    """The inbox's rule (see `assert_logged_once`); the keys handled twice."""
    inbox = {
        str(i): (str(outcome), int(attempt))  # type: ignore[call-overload]
        for i, outcome, attempt in rows(
            url, "SELECT expiry_id, outcome, attempt FROM expiryd_applied"
        )
    }
    assert len(inbox) == len(expiry_ids), f"{len(inbox)} inbox rows for {len(expiry_ids)} keys"
    assert set(inbox) == set(expiry_ids.values())
    assert {outcome for outcome, _ in inbox.values()} == {"applied"}
    wrong, again = {}, set()
    for key, expiry_id in expiry_ids.items():
        committed = inbox[expiry_id][1]
        first_hand = [line for line in lines[key] if "committed_by_attempt" not in line]
        found = [line for line in lines[key] if "committed_by_attempt" in line]
        if found:
            again.add(key)
        if not (
            len(first_hand) <= 1
            and all(line["attempt"] == committed for line in first_hand)
            and all(line["committed_by_attempt"] == committed <= line["attempt"] for line in found)
            and all(line["outcome"] == "applied" for line in lines[key])
        ):
            wrong[key] = (committed, lines[key])
    assert not wrong, (
        f"{len(wrong)} keys logged wrong (attempt committed, lines): {list(wrong.items())[:3]}"
    )
    return again


def applied(daemon: DaemonProcess) -> int:
    return sum(1 for line in daemon.handled() if line["outcome"] == "applied")


@pytest.mark.parametrize("how", BOTH)
def test_kill_9_in_the_middle_of_a_burst_then_restart(
    mysql_url: str, redis_db: RedisServer, start_daemon: StartDaemon, how: Cancelling
) -> None:
    numbers = shop(mysql_url, how.orders)
    daemon = start_cancelling(start_daemon, mysql_url, how)
    client = redis_db.client()
    cancel(client, numbers)
    at_kill = kill_mid_burst(daemon, client, lambda: applied(daemon), len(numbers) // 5)
    assert at_kill < len(numbers), "the burst was over before the kill"

    restarted = start_cancelling(start_daemon, mysql_url, how)
    assert_exactly_once(
        redis_db, mysql_url, numbers, [daemon, restarted], IN_HAND, recorded=how.recorded
    )
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
    assert_exactly_once(redis_db, mysql_url, numbers, [daemon], rerun_at_most=CONCURRENCY)
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
    assert_queue_settled(redis_db, [daemon, fixed])


@pytest.mark.parametrize("kill_one", [False, True])
@pytest.mark.parametrize("how", BOTH)
def test_two_daemons_share_a_burst_each_expiry_applied_once(
    mysql_url: str,
    redis_db: RedisServer,
    start_daemon: StartDaemon,
    how: Cancelling,
    kill_one: bool,
) -> None:
    numbers = shop(mysql_url, how.orders)
    first = start_cancelling(start_daemon, mysql_url, how)
    second = start_cancelling(start_daemon, mysql_url, how)
    client = redis_db.client()
    cancel(client, numbers)
    if kill_one:
        both = lambda: applied(first) + applied(second)  # noqa: E731
        assert kill_mid_burst(first, client, both, len(numbers) // 2) < len(numbers)

    rerun_at_most = IN_HAND if kill_one else 0
    assert_exactly_once(
        redis_db, mysql_url, numbers, [first, second], rerun_at_most, recorded=how.recorded
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
    assert_exactly_once(redis_db, mysql_url, numbers, [daemon, restarted])


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
    assert_queue_settled(redis_db, [daemon], dead=2)


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
            changed = wait_for_audit(mysql_url, 99, timeout=30, then=LEASE_SECONDS + 2)
            assert locked not in changed and len(changed) == 99
            waiting = [line for line in daemon.handled() if line["order_sn"] == locked]
            assert waiting and {line["outcome"] for line in waiting} == {"retry"}
            assert {line["attempt"] for line in waiting} == {1}
            holder.rollback()
    finally:
        holder.close()
    assert_exactly_once(redis_db, mysql_url, numbers, [daemon], recorded=False)
    final = [line for line in daemon.handled() if line["order_sn"] == locked][-1]
    assert (final["outcome"], final["attempt"]) == ("applied", 1)


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
    assert_queue_settled(redis_db, [daemon], dead=1)


ONE_WORKER = worker(concurrency=1)
"""One worker, so that the daemon's COMMITs come in a known order: per transaction, the
one SQLAlchemy sends after setting READ COMMITTED, the transaction's own, and the one
after setting the isolation level back."""


def through_proxy(
    proxy: FaultProxy, mysql_url: str, redis_db: RedisServer, start_daemon: StartDaemon
) -> tuple[DaemonProcess, list[str]]:
    """A daemon whose database connections go through `proxy`, its first 100 orders
    cancelled (its first transaction and first inbox prune are behind it) and nothing in
    hand; the 2000 order numbers."""
    numbers = shop(mysql_url, 2000)
    daemon = start_daemon(proxy.url(mysql_url.rsplit("/", 1)[1]), ONE_WORKER + ORDER_ROUTES)
    cancel(redis_db.client(), numbers[:100], ttl_ms=300)
    daemon.wait_for(lambda: applied(daemon) >= 100, 30, "the first 100 applied")
    return daemon, numbers


def test_a_lost_commit_reply_is_retried_and_the_retry_runs_nothing_that_committed(
    mariadb: MariaDB, mysql_url: str, redis_db: RedisServer, start_daemon: StartDaemon
) -> None:
    """The first COMMIT of a burst of `orders.cancel` reaches the server, which commits,
    but its reply is lost with the connection: `commit.unknown`, and the group is retried.
    The retry finds every id in the inbox and runs nothing: each of those orders is
    applied once, logged as committed by attempt 1."""
    with FaultProxy(mariadb) as proxy:
        daemon, numbers = through_proxy(proxy, mysql_url, redis_db, start_daemon)
        proxy.drop_commit_replies(1, after=1)  # the transaction's own COMMIT
        cancel(redis_db.client(), numbers[100:])
        assert_exactly_once(
            redis_db, mysql_url, numbers, [daemon], rerun_at_most=BATCH_SIZE, recorded=False
        )
        assert proxy.dropped == 1

    (unknown,) = daemon.events("commit.unknown")
    assert unknown["level"] == "warning" and unknown["inbox"] is True
    lines = daemon.handled()
    assert not [line for line in lines if line["outcome"] == "skipped"]
    found = [line for line in lines if "committed_by_attempt" in line]
    assert len(found) == unknown["expiries"] >= 1
    # A lost reply uses up no attempt: the retry is attempt 1 again, and finds attempt 1.
    assert {(line["attempt"], line["committed_by_attempt"]) for line in found} == {(1, 1)}
    lost = {line["key"] for line in found}
    retries = [line for line in lines if line["outcome"] == "retry"]
    assert {line["key"] for line in retries} == lost
    assert all("COMMIT's reply was lost" in line["error"] for line in retries)
    for key in lost:
        mine = [line for line in lines if line["key"] == key]
        assert [(line["outcome"], line["attempt"]) for line in mine] == [
            ("retry", 1), ("applied", 1),
        ]  # fmt: skip


def test_a_connection_lost_after_its_commit_succeeded_runs_nothing_again(
    mariadb: MariaDB, mysql_url: str, redis_db: RedisServer, start_daemon: StartDaemon
) -> None:
    """The COMMIT of a group succeeds and its reply arrives; the connection is lost just
    after, on the COMMIT that SQLAlchemy sends when it sets the isolation level back. The
    group is done: each of its orders is logged applied by the attempt that committed it,
    once, and nothing is run or looked up again."""
    with FaultProxy(mariadb) as proxy:
        daemon, numbers = through_proxy(proxy, mysql_url, redis_db, start_daemon)
        proxy.drop_commit_replies(1, after=2)  # the one after the transaction's own
        cancel(redis_db.client(), numbers[100:])
        assert_exactly_once(redis_db, mysql_url, numbers, [daemon], recorded=False)
        assert proxy.dropped == 1
    assert not daemon.events("commit.unknown")

"""Every deadline known, every expiry on time, none lost to an outage: the daemon as a
subprocess against real redis-server (and MariaDB where rows are checked)."""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import redis

from tests.e2e.conftest import StartDaemon, assert_queue_settled
from tests.support.daemon import DaemonProcess, psetex_many, setex
from tests.support.servers import RedisServer
from tests.support.shop import create_orders, statuses

LEDGER = "expiryd:deadlines"


def wait_for_ledger(client: redis.Redis, count: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while client.zcard(LEDGER) < count:
        assert time.monotonic() < deadline, f"ledger has {client.zcard(LEDGER)} of {count}"
        time.sleep(0.05)


def handled_once_each(daemon: DaemonProcess, keys: list[str], timeout: float = 120) -> list[dict]:
    wanted = set(keys)
    daemon.wait_for(
        lambda: len({line["key"] for line in daemon.handled()} & wanted) == len(wanted),
        timeout,
        f"{len(wanted)} keys handled",
    )
    time.sleep(0.5)
    lines = [line for line in daemon.handled() if line["key"] in wanted]
    repeated = [key for key, n in Counter(line["key"] for line in lines).items() if n > 1]
    assert repeated == [], f"handled more than once: {repeated[:5]}"
    return lines


def orders(count: int) -> dict[str, int | str]:
    return {f"SN{n:06d}": 0 for n in range(count)}


def cancel_keys(count: int) -> list[str]:
    return [f"order:cancel:SN{n:06d}" for n in range(count)]


def test_expiries_while_the_daemon_is_stopped_are_recovered_after_it_starts(
    mysql_url: str, redis_db: RedisServer, start_daemon: StartDaemon
) -> None:
    create_orders(mysql_url, orders(1000))
    client = redis_db.client()
    daemon = start_daemon(mysql_url)
    psetex_many(client, cancel_keys(1000), 2000)
    wait_for_ledger(client, 1000)
    assert daemon.stop() == 0
    gone_by = time.monotonic() + 30

    def left() -> int:
        return sum(1 for key in client.scan_iter() if not key.startswith(b"expiryd:"))

    while left():  # Redis expires them, announcing it to nobody
        assert time.monotonic() < gone_by, f"{left()} keys still there"
        time.sleep(0.1)

    restarted = start_daemon(mysql_url)
    lines = handled_once_each(restarted, cancel_keys(1000))
    assert all(line["recovered"] is True and line["source"] == "recovery" for line in lines)
    assert all(line["lateness_ms"] > 0 and line["deadline"] for line in lines)
    assert set(statuses(mysql_url).values()) == {3}
    assert_queue_settled(redis_db, [daemon, restarted])


def test_a_pubsub_connection_killed_mid_burst_loses_nothing(
    mysql_url: str, redis_db: RedisServer, start_daemon: StartDaemon
) -> None:
    create_orders(mysql_url, orders(2000))
    client = redis_db.client()
    daemon = start_daemon(mysql_url)
    psetex_many(client, cancel_keys(2000), [1000 + n for n in range(2000)])  # over 2 s
    daemon.wait_for(lambda: len(daemon.handled()) >= 300, 30, "the burst to start")
    assert client.client_kill_filter(_type="pubsub") == 1

    handled_once_each(daemon, cancel_keys(2000))
    assert daemon.events("redis.disconnected")
    assert set(statuses(mysql_url).values()) == {3}
    assert_queue_settled(redis_db, [daemon])


def test_a_subscriber_dropped_for_its_output_buffer_loses_nothing(
    sqlite_url: str, redis_db: RedisServer, start_daemon: StartDaemon
) -> None:
    keys = [f"burst:{n}" for n in range(50_000)]
    client = redis_db.client()
    body = '[[routes]]\npattern = "burst:{n}"\nhandler = "tests.support.hooks:accept"\n'
    daemon = start_daemon(sqlite_url, body)
    psetex_many(client, keys, 3000)
    wait_for_ledger(client, len(keys))
    original = client.config_get("client-output-buffer-limit")["client-output-buffer-limit"]
    client.config_set("client-output-buffer-limit", "pubsub 4096 1024 1")
    try:
        daemon.wait_for_event("redis.disconnected", timeout=30)
    finally:
        client.config_set("client-output-buffer-limit", original)

    lines = handled_once_each(daemon, keys, timeout=240)
    assert {line["outcome"] for line in lines} == {"applied"}
    assert any(line["recovered"] for line in lines)
    assert_queue_settled(redis_db, [daemon])


def test_orders_due_among_100k_other_keys_are_cancelled_within_seconds(
    mysql_url: str, redis_db: RedisServer, start_daemon: StartDaemon
) -> None:
    client = redis_db.client()
    psetex_many(client, [f"session:{n}" for n in range(100_000)], 3_600_000)
    create_orders(mysql_url, orders(1000))
    daemon = start_daemon(mysql_url)
    daemon.wait_for_event("ledger.synced")
    psetex_many(client, cancel_keys(1000), [2000 + 2 * n for n in range(1000)])

    lines = handled_once_each(daemon, cancel_keys(1000), timeout=60)
    assert set(statuses(mysql_url).values()) == {3}
    # Generous: without the ledger, most of them are still waiting after 90 s.
    assert max(line["lateness_ms"] for line in lines) < 15_000
    sources = {line["source"] for line in lines}
    assert "nudge" in sources
    assert "recovery" not in sources  # nothing was missed, so nothing is recovered
    assert_queue_settled(redis_db, [daemon])


def test_an_extended_ttl_is_handled_at_the_new_deadline(
    sqlite_url: str, redis_db: RedisServer, start_daemon: StartDaemon
) -> None:
    create_orders(sqlite_url, {"SN1": 0})
    client = redis_db.client()
    daemon = start_daemon(sqlite_url)
    set_at = time.time()
    setex(client, "order:cancel:SN1", 1)
    client.expire("order:cancel:SN1", 3)

    line = daemon.wait_for_event("expiry.handled", timeout=15)[0]
    deadline = datetime.fromisoformat(line["deadline"]).timestamp()
    assert abs(deadline - (set_at + 3)) < 0.5
    assert datetime.fromisoformat(line["timestamp"]).timestamp() >= set_at + 2.9
    time.sleep(0.5)
    assert len(daemon.handled()) == 1
    assert_queue_settled(redis_db, [daemon])


def test_persisted_and_deleted_keys_are_not_handled(
    sqlite_url: str, redis_db: RedisServer, start_daemon: StartDaemon
) -> None:
    create_orders(sqlite_url, {"SN1": 0, "SN2": 0, "SN3": 0})
    client = redis_db.client()
    daemon = start_daemon(sqlite_url)
    setex(client, "order:cancel:SN1", 1)
    client.persist("order:cancel:SN1")
    setex(client, "order:cancel:SN2", 1)
    client.delete("order:cancel:SN2")
    setex(client, "order:cancel:SN3", 2)

    daemon.wait_for_event("expiry.handled", timeout=15)
    time.sleep(1)
    assert [line["key"] for line in daemon.handled()] == ["order:cancel:SN3"]
    assert statuses(sqlite_url) == {"SN1": 0, "SN2": 0, "SN3": 3}
    assert client.zcard(LEDGER) == 0
    assert_queue_settled(redis_db, [daemon])


def test_a_timer_deleted_while_the_daemon_is_stopped_is_not_applied_at_its_deadline(
    sqlite_url: str, redis_db: RedisServer, start_daemon: StartDaemon
) -> None:
    create_orders(sqlite_url, {"SN1": 0, "SN2": 0})
    client = redis_db.client()
    daemon = start_daemon(sqlite_url)
    setex(client, "order:cancel:SN1", 4)
    setex(client, "order:cancel:SN2", 4)
    wait_for_ledger(client, 2)
    assert daemon.stop() == 0
    client.delete("order:cancel:SN1")  # the order was paid: its timer is cleared
    restarted = start_daemon(sqlite_url)
    (synced,) = restarted.wait_for_event("ledger.synced")
    assert synced["forgotten"] == 1
    restarted.wait_for_event("expiry.handled", timeout=15)
    time.sleep(1)
    assert [line["key"] for line in restarted.handled()] == ["order:cancel:SN2"]
    assert statuses(sqlite_url) == {"SN1": 0, "SN2": 3}
    assert_queue_settled(redis_db, [daemon, restarted])


def test_capture_values_hands_the_value_to_the_handler(
    sqlite_url: str, redis_db: RedisServer, start_daemon: StartDaemon, tmp_path: Path
) -> None:
    out = tmp_path / "values.jsonl"
    body = '[[routes]]\npattern = "hook:{name}"\nhandler = "tests.support.hooks:save_value"\n'
    daemon = start_daemon(
        sqlite_url, body, redis="capture_values = true", env={"HOOK_OUT": str(out)}
    )
    client = redis_db.client()
    client.execute_command("SETEX", "hook:a", 1, '{"order": "SN1", "amount": 12}')
    client.execute_command("SETEX", "hook:b", 1, "延迟任务")

    daemon.wait_for_event("expiry.handled", 2, timeout=15)
    received = {
        line["key"]: line["value"] for line in map(json.loads, out.read_text().split("\n")[:-1])
    }
    assert received == {"hook:a": '{"order": "SN1", "amount": 12}', "hook:b": "延迟任务"}
    assert client.hlen("expiryd:values") == 0
    assert_queue_settled(redis_db, [daemon])

"""`expiryd run` as a subprocess against real Redis and MariaDB, as a user runs it."""

from __future__ import annotations

import json
import signal
import time

import pytest

from tests.e2e.conftest import StartDaemon, assert_queue_settled
from tests.support.daemon import DaemonProcess, run_cli, setex
from tests.support.servers import MariaDB, RedisServer
from tests.support.shop import ORDER_ROUTES, SEED_ORDERS, create_orders, execute, statuses


def handled_by_key(daemon: DaemonProcess, count: int, timeout: float = 20) -> dict[str, dict]:
    lines = daemon.wait_for_event("expiry.handled", count, timeout)
    return {line["key"]: line for line in lines}


def test_orders_are_cancelled_and_completed_with_one_log_line_each(
    mysql_url: str, redis_db: RedisServer, start_daemon: StartDaemon
) -> None:
    create_orders(mysql_url, {"SN1": 0, "SN2": 2, "SN3": 0})
    daemon = start_daemon(mysql_url)
    client = redis_db.client()
    setex(client, "order:cancel:SN1", 1, "x")
    setex(client, "order:complete:SN2", 1, "x")

    lines = handled_by_key(daemon, 2)
    assert statuses(mysql_url) == {"SN1": 3, "SN2": 4, "SN3": 0}
    cancel = lines["order:cancel:SN1"]
    assert cancel["route"] == "order:cancel:{order_sn}"
    assert cancel["handler"] == "orders.cancel"
    assert cancel["order_sn"] == "SN1"
    assert cancel["outcome"] == "applied"
    assert cancel["rows"] == 1
    assert cancel["duration_ms"] >= 0
    assert cancel["level"] == "info"
    assert "timestamp" in cancel
    assert lines["order:complete:SN2"]["outcome"] == "applied"
    time.sleep(0.5)
    assert len(daemon.handled()) == 2
    assert_queue_settled(redis_db, [daemon])


def test_a_key_deleted_before_its_deadline_changes_nothing(
    mysql_url: str, redis_db: RedisServer, start_daemon: StartDaemon
) -> None:
    create_orders(mysql_url, {"SN1": 0, "SN2": 0})
    daemon = start_daemon(mysql_url)
    client = redis_db.client()
    setex(client, "order:cancel:SN1", 1, "x")
    setex(client, "order:cancel:SN2", 2, "x")
    client.delete("order:cancel:SN1")

    handled_by_key(daemon, 1)
    time.sleep(1)
    assert [line["key"] for line in daemon.handled()] == ["order:cancel:SN2"]
    assert statuses(mysql_url) == {"SN1": 0, "SN2": 3}
    assert_queue_settled(redis_db, [daemon])


def test_an_order_paid_before_its_deadline_is_skipped(
    mysql_url: str, redis_db: RedisServer, start_daemon: StartDaemon
) -> None:
    create_orders(mysql_url, {"SN1": 0})
    daemon = start_daemon(mysql_url)
    setex(redis_db.client(), "order:cancel:SN1", 1, "x")
    execute(mysql_url, "UPDATE orders SET status = 1 WHERE order_sn = 'SN1'")

    line = handled_by_key(daemon, 1)["order:cancel:SN1"]
    assert line["outcome"] == "skipped"
    assert line["rows"] == 0
    assert statuses(mysql_url) == {"SN1": 1}
    assert_queue_settled(redis_db, [daemon])


def test_the_seed_schema_and_key_format_configured_through_orders(
    mysql_url: str, redis_db: RedisServer, start_daemon: StartDaemon
) -> None:
    create_orders(mysql_url, {"SN1700000000T12345678": "0", "SN1700000001T1": "0"}, SEED_ORDERS)
    body = """
[orders]
table = "order"
key_column = "ordersn"
status_column = "status"
cancel = { from = ["0"], to = "3" }

[[routes]]
pattern = "{order_sn}:{use_mysql}"
handler = "orders.cancel"
"""
    daemon = start_daemon(mysql_url, body)
    setex(redis_db.client(), "SN1700000000T12345678:1", 1, "redis延迟任务")

    line = handled_by_key(daemon, 1)["SN1700000000T12345678:1"]
    assert line["outcome"] == "applied"
    assert line["use_mysql"] == "1"
    assert statuses(mysql_url, SEED_ORDERS) == {"SN1700000000T12345678": "3", "SN1700000001T1": "0"}
    assert_queue_settled(redis_db, [daemon])


@pytest.mark.parametrize("pool", ["none", "queue"])
def test_an_idle_daemon_outlives_the_servers_wait_timeout(
    mariadb: MariaDB, mysql_url: str, redis_db: RedisServer, start_daemon: StartDaemon, pool: str
) -> None:
    create_orders(mysql_url, {"SN1": 0, "SN2": 0})
    body = f'pool = "{pool}"\n' + ORDER_ROUTES
    with mariadb.admin() as admin, admin.cursor() as cursor:
        cursor.execute("SET GLOBAL wait_timeout = 2")
    try:
        daemon = start_daemon(mysql_url, body)
        setex(redis_db.client(), "order:cancel:SN1", 1, "x")
        handled_by_key(daemon, 1)
        time.sleep(5)  # idle for longer than wait_timeout
        setex(redis_db.client(), "order:cancel:SN2", 1, "x")
        lines = handled_by_key(daemon, 2)
    finally:
        with mariadb.admin() as admin, admin.cursor() as cursor:
            cursor.execute("SET GLOBAL wait_timeout = 28800")
    assert lines["order:cancel:SN2"]["outcome"] == "applied"
    assert statuses(mysql_url) == {"SN1": 3, "SN2": 3}
    assert_queue_settled(redis_db, [daemon])


def test_an_injection_shaped_key_changes_nothing_else(
    mysql_url: str, redis_db: RedisServer, start_daemon: StartDaemon
) -> None:
    create_orders(mysql_url, {"SN1": 0, "SN2": 0})
    daemon = start_daemon(mysql_url)
    client = redis_db.client()
    setex(client, "order:cancel:x' OR '1'='1", 1, "x")
    setex(client, "order:cancel:SN1' OR status=0 -- ", 1, "x")

    lines = handled_by_key(daemon, 2)
    assert {line["outcome"] for line in lines.values()} == {"skipped"}
    assert statuses(mysql_url) == {"SN1": 0, "SN2": 0}
    assert_queue_settled(redis_db, [daemon])


def test_keys_of_other_shapes_are_unrouted_and_the_daemon_keeps_going(
    mysql_url: str, redis_db: RedisServer, start_daemon: StartDaemon
) -> None:
    create_orders(mysql_url, {"SN1": 0})
    daemon = start_daemon(mysql_url)
    client = redis_db.client()
    odd = [b"session:abc", b"order:cancel:", b"order:cancel:a:b", b"order:\xff\xfe", b"k" * 5000]
    for key in odd:
        setex(client, key, 1, "x")
    setex(client, "expiryd:internal", 1, "x")
    time.sleep(0.2)
    setex(client, "order:cancel:SN1", 1, "x")

    lines = daemon.wait_for_event("expiry.handled", len(odd) + 1)
    unrouted = [line for line in lines if line["outcome"] == "unrouted"]
    assert len(unrouted) == len(odd)
    assert all(line["route"] is None and line["handler"] is None for line in unrouted)
    reasons = {line["reason"] for line in unrouted}
    assert "key is not valid UTF-8" in reasons
    assert "key is 5000 bytes, over max_key_bytes=1024" in reasons
    assert lines[-1]["key"] == "order:cancel:SN1"
    assert lines[-1]["outcome"] == "applied"
    assert not any(line["key"].startswith("expiryd:") for line in lines)
    assert_queue_settled(redis_db, [daemon])


def test_a_failing_handler_is_retried_then_dead_lettered_and_the_daemon_keeps_going(
    mysql_url: str, redis_db: RedisServer, start_daemon: StartDaemon
) -> None:
    create_orders(mysql_url, {"SN1": 0})
    body = (
        '[[routes]]\npattern = "boom:{x}"\nhandler = "tests.support.hooks:explode"\n'
        "retry = { attempts = 2, base_seconds = 0.2 }\n"
        '[[routes]]\npattern = "order:cancel:{order_sn}"\nhandler = "orders.cancel"\n'
    )
    daemon = start_daemon(mysql_url, body)
    client = redis_db.client()
    setex(client, "boom:1", 1, "x")
    time.sleep(0.2)
    setex(client, "order:cancel:SN1", 1, "x")

    lines = daemon.wait_for_event("expiry.handled", 3)
    boom = [line for line in lines if line["key"] == "boom:1"]
    assert [(b["outcome"], b["attempt"], b["level"]) for b in boom] == [
        ("retry", 1, "warning"),
        ("dead", 2, "error"),
    ]
    assert boom[0]["error"] == "RuntimeError: boom for {'x': '1'}"
    assert 0.1 <= boom[0]["retry_in_s"] <= 0.2
    assert boom[0]["expiry_id"] == boom[1]["expiry_id"]
    assert [line["outcome"] for line in lines if line["key"] == "order:cancel:SN1"] == ["applied"]
    listed = run_cli("dead", "list", "--json", "--config", str(daemon.config))
    assert json.loads(listed.stdout)["key"] == "boom:1"
    assert_queue_settled(redis_db, [daemon], dead=1)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_exits_zero_and_logs_the_shutdown(
    sqlite_url: str, start_daemon: StartDaemon, sig: signal.Signals
) -> None:
    create_orders(sqlite_url, {})
    daemon = start_daemon(sqlite_url)
    assert daemon.stop(sig) == 0
    assert daemon.events("expiryd.stopping")[0]["signal"] == sig.name
    assert daemon.events("expiryd.stopped")
    assert "Traceback" not in daemon.stderr


def test_a_killed_pubsub_connection_is_logged_and_resubscribed(
    sqlite_url: str, redis_db: RedisServer, start_daemon: StartDaemon
) -> None:
    create_orders(sqlite_url, {"SN1": 0})
    daemon = start_daemon(sqlite_url)
    client = redis_db.client()
    assert client.client_kill_filter(_type="pubsub") == 1

    daemon.wait_subscribed(2)
    assert daemon.events("redis.disconnected")
    assert daemon.events("listener.subscribed")[-1]["resubscribe"] is True
    setex(client, "order:cancel:SN1", 1, "x")
    assert handled_by_key(daemon, 1)["order:cancel:SN1"]["outcome"] == "applied"
    assert_queue_settled(redis_db, [daemon])


def test_a_restarted_redis_server_is_reconnected_to(
    sqlite_url: str, redis_db: RedisServer, start_daemon: StartDaemon
) -> None:
    create_orders(sqlite_url, {"SN1": 0})
    daemon = start_daemon(sqlite_url)
    redis_db.stop()
    daemon.wait_for_event("redis.disconnected", 2)
    redis_db.start()
    daemon.wait_subscribed(2)
    setex(redis_db.client(), "order:cancel:SN1", 1, "x")
    assert handled_by_key(daemon, 1)["order:cancel:SN1"]["outcome"] == "applied"
    assert_queue_settled(redis_db, [daemon])


def test_no_password_appears_in_the_log(
    mysql_url: str, redis_db: RedisServer, start_daemon: StartDaemon
) -> None:
    create_orders(mysql_url, {"SN1": 0})
    daemon = start_daemon(mysql_url)
    setex(redis_db.client(), "order:cancel:SN1", 1, "x")
    handled_by_key(daemon, 1)
    daemon.stop()
    assert MariaDB.password not in "".join(daemon.raw) + daemon.stderr
    assert "***" in daemon.events("expiryd.started")[0]["database"]
    assert_queue_settled(redis_db, [daemon])

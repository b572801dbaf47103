"""expiryd and a producer as the Redis users of redis.conf.sample, on a redis-server
started on that very file: each can do its job and nothing more."""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.e2e.conftest import REPO, StartDaemon, assert_queue_settled, write_config
from tests.support.daemon import DaemonProcess, run_cli, setex
from tests.support.servers import MariaDB, RedisServer
from tests.support.shop import ORDER_ROUTES, create_orders, execute, rows, statuses

SAMPLE = REPO / "redis.conf.sample"
ACCEPT = '[[routes]]\npattern = "t:{n}"\nhandler = "tests.support.hooks:accept"\n'
ROUTES = (
    ORDER_ROUTES
    + '[[routes]]\npattern = "order:notify:{order_sn}"\nhandler = "redis.stream"\n'
    + '[[routes]]\npattern = "order:fail:{order_sn}"\nhandler = "tests.support.hooks:explode"\n'
    + "retry = { attempts = 1 }\n"
)
EXPIRYD_PASSWORD = "expiryd-CHANGE-ME"
PRODUCER_PASSWORD = "producer-CHANGE-ME"


@pytest.fixture(scope="module")
def sample_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis-sample"), config_file=SAMPLE)
    server.start()
    yield server
    server.stop()


def as_user(server: RedisServer, name: str, password: str) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=server.port, db=15, username=name, password=password)


def test_the_sample_config_sets_what_expiryd_needs(sample_redis: RedisServer) -> None:
    admin = sample_redis.client()
    settings = admin.config_get("*")
    assert settings["notify-keyspace-events"] in ("xgE", "gxE", "Egx")  # as Redis spells it
    assert settings["protected-mode"] == "yes"
    assert settings["maxmemory-policy"] == "noeviction"
    assert settings["appendfsync"] == "everysec"
    assert settings["client-output-buffer-limit"].split("pubsub ")[1] == "268435456 67108864 60"
    users = {
        line.split()[1] for line in SAMPLE.read_text().splitlines() if line.startswith("user ")
    }
    assert users == {"expiryd", "producer"}
    # Every other setting line carries a comment above it.
    lines = SAMPLE.read_text().splitlines()
    for number, line in enumerate(lines):
        if line and not line.startswith("#"):
            assert lines[number - 1].startswith("#"), f"no comment above: {line}"


def test_the_daemon_as_the_expiryd_user_handles_expiries_and_is_never_refused(
    sample_redis: RedisServer, mysql_url: str, tmp_path: Path
) -> None:
    """Every part that talks to Redis, as the sample's users: the orders and stream
    handlers, a dead letter and its purge, status, and a reload."""
    admin = sample_redis.client()
    admin.flushall()
    admin.execute_command("ACL", "LOG", "RESET")
    create_orders(mysql_url, {"SN1": 0, "SN2": 2, "SN3": 0})
    url = f"redis://expiryd:{EXPIRYD_PASSWORD}@127.0.0.1:{sample_redis.port}/15"
    config = write_config(tmp_path / "expiryd.toml", url, mysql_url, ROUTES)
    daemon = DaemonProcess(config, env={"PYTHONPATH": str(REPO)})
    try:
        daemon.wait_subscribed()
        producer = as_user(sample_redis, "producer", PRODUCER_PASSWORD)
        setex(producer, "order:cancel:SN1", 1)
        producer.execute_command("PSETEX", "order:complete:SN2", 1000, "x")
        setex(producer, "order:cancel:SN3", 1)
        producer.delete("order:cancel:SN3")  # paid in time: the producer cancels the timer
        setex(producer, "order:notify:SN1", 1)
        setex(producer, "order:fail:SN1", 1)
        lines = daemon.wait_for_event("expiry.handled", 4)
        assert sorted(line["outcome"] for line in lines) == ["applied"] * 3 + ["dead"]
        assert statuses(mysql_url) == {"SN1": 3, "SN2": 4, "SN3": 0}
        assert admin.xlen("expiryd:expired") == 1

        assert run_cli("status", "--config", str(config)).returncode == 0
        purged = run_cli("dead", "purge", "--all", "--config", str(config))
        assert purged.stdout.strip() == "1 dead letters removed", purged.stderr
        config.write_text(config.read_text() + "\n[worker]\nconcurrency = 1\n")
        daemon.process.send_signal(signal.SIGHUP)
        daemon.wait_for_event("config.reloaded", timeout=40)
        assert len(daemon.events("listener.subscribed")) == 1  # in place: still subscribed
        assert_queue_settled(sample_redis, [daemon], dead=0)
        assert daemon.stop() == 0
    finally:
        if daemon.running:
            daemon.stop()
    # Nothing expiryd tried was refused, not even something it would have retried.
    assert admin.execute_command("ACL", "LOG") == []
    problems = [line for line in daemon.lines if line["level"] in ("warning", "error")]
    assert [line["event"] for line in problems] == ["expiry.handled"]  # the dead letter


def test_the_expiryd_user_cannot_change_or_delete_a_watched_key(
    sample_redis: RedisServer,
) -> None:
    sample_redis.client().set("order:cancel:SN9", "x")
    expiryd = as_user(sample_redis, "expiryd", EXPIRYD_PASSWORD)
    assert expiryd.pttl("order:cancel:SN9") == -1  # it may read one
    for attempt in (
        lambda: expiryd.delete("order:cancel:SN9"),
        lambda: expiryd.set("order:cancel:SN9", "y"),
        lambda: expiryd.expire("order:cancel:SN9", 5),
        lambda: expiryd.config_set("notify-keyspace-events", ""),
        lambda: expiryd.flushdb(),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            attempt()
    assert sample_redis.client().get("order:cancel:SN9") == b"x"


def test_the_producer_cannot_read_keys_or_touch_expiryds_state(
    sample_redis: RedisServer,
) -> None:
    admin = sample_redis.client()
    admin.zadd("expiryd:deadlines", {"order:cancel:SN8": 1})
    producer = as_user(sample_redis, "producer", PRODUCER_PASSWORD)
    setex(producer, "order:cancel:SN8", 60)
    producer.expire("order:cancel:SN8", 120)
    for attempt in (
        lambda: producer.get("order:cancel:SN8"),
        lambda: producer.set("order:cancel:SN8", "y", get=True),
        lambda: producer.zcard("expiryd:deadlines"),
        lambda: producer.delete("expiryd:deadlines"),
        lambda: setex(producer, "expiryd:jobs", 1),
        lambda: producer.publish("expiryd:sweep@15", "forged marker"),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            attempt()
    assert admin.zcard("expiryd:deadlines") == 1


def readme_grants(database: str, user: str) -> list[str]:
    """The GRANTs the README gives, for `database` and `user`."""
    grants = re.findall(r"^ +(GRANT .+);$", (REPO / "README.md").read_text(), re.MULTILINE)
    assert grants == [
        "GRANT SELECT, UPDATE (status) ON shop.orders TO 'expiryd'@'10.0.0.%'",
        "GRANT SELECT, INSERT, DELETE ON shop.expiryd_applied TO 'expiryd'@'10.0.0.%'",
    ]
    return [
        grant.replace("shop.", f"{database}.").replace("'expiryd'@'10.0.0.%'", user)
        for grant in grants
    ]


@pytest.mark.mysql
def test_the_daemon_runs_with_only_the_readmes_mysql_grant(
    mariadb: MariaDB,
    mysql_url: str,
    start_daemon: StartDaemon,
    redis_db: RedisServer,
    tmp_path: Path,
) -> None:
    create_orders(mysql_url, {"SN1": 0, "SN2": 2})
    admin_config = write_config(tmp_path / "admin.toml", redis_db.url(), mysql_url)
    created = run_cli("init-db", "--config", str(admin_config))  # as an administrator
    assert "'expiryd_applied'" in created.stdout, created.stderr
    database = mysql_url.rsplit("/", 1)[1]
    with mariadb.admin() as admin, admin.cursor() as cursor:
        cursor.execute("DROP USER IF EXISTS 'expiryd_lp'@'%'")
        cursor.execute("CREATE USER 'expiryd_lp'@'%' IDENTIFIED BY 'lp-pw'")
        for grant in readme_grants(database, "'expiryd_lp'@'%'"):
            cursor.execute(grant)
    narrow_url = f"mysql+pymysql://expiryd_lp:lp-pw@127.0.0.1:{mariadb.port}/{database}"
    for denied in (  # the grant is as narrow as it says
        "INSERT INTO orders (order_sn, status) VALUES ('SN9', 0)",
        "UPDATE orders SET order_sn = 'SN7' WHERE order_sn = 'SN1'",
        "DELETE FROM orders",
        "CREATE TABLE other (id INTEGER)",
    ):
        with pytest.raises(Exception, match="command denied"):
            execute(narrow_url, denied)

    daemon = start_daemon(narrow_url)
    client = redis_db.client()
    setex(client, "order:cancel:SN1", 1)
    setex(client, "order:complete:SN2", 1)
    lines = daemon.wait_for_event("expiry.handled", 2)
    assert {line["outcome"] for line in lines} == {"applied"}
    assert statuses(mysql_url) == {"SN1": 3, "SN2": 4}
    assert len(rows(mysql_url, "SELECT expiry_id FROM expiryd_applied")) == 2
    assert_queue_settled(redis_db, [daemon])


def test_an_expiryd_user_without_config_get_works_and_is_told_it_cannot_check(
    sample_redis: RedisServer, sqlite_url: str, tmp_path: Path
) -> None:
    """The sample's expiryd user less +config|get, which would show every setting."""
    (rules,) = [
        line for line in SAMPLE.read_text().splitlines() if line.startswith("user expiryd ")
    ]
    narrower = rules.split()[2:]
    narrower.remove("+config|get")
    admin = sample_redis.client()
    admin.execute_command("ACL", "SETUSER", "expiryd_noconfig", "reset", *narrower)
    url = f"redis://expiryd_noconfig:{EXPIRYD_PASSWORD}@127.0.0.1:{sample_redis.port}/15"
    config = write_config(tmp_path / "expiryd.toml", url, sqlite_url, ACCEPT)
    check = run_cli("check", "--config", str(config))
    assert check.returncode == 0, check.stdout + check.stderr
    assert "not readable by this user (no CONFIG GET)" in check.stdout
    daemon = DaemonProcess(config, env={"PYTHONPATH": str(REPO)})
    try:
        daemon.wait_subscribed()
        (warning,) = daemon.events("redis.unverified")
        assert "notify-keyspace-events" in warning["error"]
        assert not daemon.events("redis.eviction_unsafe")
        setex(admin, "t:1", 1)
        daemon.wait_for_event("expiry.handled")
        assert daemon.stop() == 0
    finally:
        if daemon.running:
            daemon.stop()

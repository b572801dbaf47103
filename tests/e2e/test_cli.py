"""The other commands and the ways `run` refuses to start, as a user meets them."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.conftest import StartDaemon, assert_queue_settled, write_config
from tests.support.daemon import DaemonProcess, run_cli, setex
from tests.support.servers import MariaDB, RedisServer
from tests.support.shop import ORDER_ROUTES, create_orders, statuses


def assert_one_line_error(stderr: str, *parts: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("expiryd: error: ")
    for part in parts:
        assert part in lines[0]


def test_a_config_error_exits_non_zero_with_one_line(tmp_path: Path, mysql_url: str) -> None:
    config = write_config(
        tmp_path / "shop.toml",
        "redis://127.0.0.1:1/15",
        mysql_url,
        '[[routes]]\npattern = "order:{order_sn}"\nhandler = "orders.refund"\n',
    )
    result = run_cli("run", "--config", str(config))
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "shop.toml", "[[routes]] #1", "unknown handler")
    assert MariaDB.password not in result.stderr


def test_a_missing_table_is_named_at_start(tmp_path: Path, mysql_url: str) -> None:
    config = write_config(tmp_path / "shop.toml", "redis://127.0.0.1:1/15", mysql_url)
    result = run_cli("run", "--config", str(config))
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "table 'orders' does not exist", "expiryd:***@")
    assert MariaDB.password not in result.stderr


def test_redis_without_notifications_is_refused_with_the_command_that_fixes_it(
    tmp_path: Path, sqlite_url: str, redis_db: RedisServer
) -> None:
    create_orders(sqlite_url, {})
    redis_db.client().config_set("notify-keyspace-events", "")
    config = write_config(tmp_path / "shop.toml", redis_db.url(), sqlite_url)
    result = run_cli("run", "--config", str(config))
    assert result.returncode == 3
    assert_one_line_error(
        result.stderr,
        f"redis-cli -h 127.0.0.1 -p {redis_db.port} CONFIG SET notify-keyspace-events Egx",
        "redis.conf: notify-keyspace-events Egx",
        "--configure-redis",
    )


def test_configure_redis_sets_the_flags_and_runs(
    sqlite_url: str, redis_db: RedisServer, start_daemon: StartDaemon
) -> None:
    create_orders(sqlite_url, {"SN1": 0})
    redis_db.client().config_set("notify-keyspace-events", "K")
    daemon = start_daemon(sqlite_url, ORDER_ROUTES, "--configure-redis")
    flags = redis_db.client().config_get("notify-keyspace-events")["notify-keyspace-events"]
    assert set(flags) >= set("KEgx")
    run_cli("schedule", "--config", str(daemon.config), "order:cancel:SN1", "--in", "1s")
    daemon.wait_for_event("expiry.handled")
    assert statuses(sqlite_url) == {"SN1": 3}
    assert_queue_settled(redis_db, [daemon])


def test_check_passes_on_a_good_setup(
    tmp_path: Path, mysql_url: str, redis_db: RedisServer
) -> None:
    create_orders(mysql_url, {})
    config = write_config(tmp_path / "shop.toml", redis_db.url(), mysql_url)
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert [line.split(":")[0] for line in result.stdout.splitlines()] == ["ok"] * 5
    assert "inbox table 'expiryd_applied' not there yet" in result.stdout
    assert "CREATE TABLE expiryd_applied" in result.stdout
    assert run_cli("init-db", "--config", str(config)).returncode == 0
    again = run_cli("check", "--config", str(config))
    assert "ok: inbox table 'expiryd_applied' present" in again.stdout


def test_check_reports_each_failure_on_its_own_line(tmp_path: Path, sqlite_url: str) -> None:
    config = write_config(tmp_path / "shop.toml", "redis://127.0.0.1:1/15", sqlite_url)
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith("ok: config")
    assert lines[1].startswith("FAIL: Redis at redis://127.0.0.1:1/15")
    assert lines[2].startswith("ok: database")
    assert lines[3].startswith("FAIL: ") and "table 'orders' does not exist" in lines[3]
    assert "Traceback" not in result.stdout + result.stderr


def test_schedule_sets_a_key_with_a_ttl(
    tmp_path: Path, sqlite_url: str, redis_db: RedisServer
) -> None:
    config = write_config(tmp_path / "shop.toml", redis_db.url(), sqlite_url)
    result = run_cli(
        "schedule", "--config", str(config), "order:cancel:SN9", "--in", "30m", "--value", "v"
    )
    assert result.returncode == 0, result.stderr
    client = redis_db.client()
    assert client.get("order:cancel:SN9") == b"v"
    assert 1790 < client.ttl("order:cancel:SN9") <= 1800
    bad = run_cli("schedule", "--config", str(config), "k", "--in", "soon")
    assert bad.returncode == 2
    assert_one_line_error(bad.stderr, "--in", "not a duration")


def test_init_db_creates_the_sample_table_once(tmp_path: Path, sqlite_url: str) -> None:
    config = write_config(tmp_path / "shop.toml", "redis://127.0.0.1:1/15", sqlite_url)
    first = run_cli("init-db", "--config", str(config))
    assert first.returncode == 0 and "created" in first.stdout
    create_orders_rows = statuses(sqlite_url)
    assert create_orders_rows == {}
    assert "table 'expiryd_applied'" in first.stdout  # the inbox
    second = run_cli("init-db", "--config", str(config))
    assert second.returncode == 0
    assert second.stdout.count("left as it is") == 2, second.stdout


def test_every_command_has_help_with_an_example() -> None:
    for command in ("run", "check", "schedule", "init-db"):
        result = run_cli(command, "--help")
        assert result.returncode == 0
        assert "Example: expiryd " + command in result.stdout


def test_no_config_file_runs_on_the_defaults(tmp_path: Path, redis_db: RedisServer) -> None:
    assert run_cli("init-db", cwd=tmp_path).returncode == 0
    create_orders(f"sqlite:///{tmp_path / 'expiryd.sqlite3'}", {"SN1": 0}, create=False)
    daemon = DaemonProcess(None, cwd=tmp_path, env={"EXPIRYD_REDIS_URL": redis_db.url()})
    try:
        daemon.wait_subscribed()
        assert daemon.events("expiryd.started")[0]["config"] == "(defaults)"
        setex(redis_db.client(), "order:cancel:SN1", 1)
        daemon.wait_for_event("expiry.handled")
    finally:
        daemon.stop()
    assert statuses(f"sqlite:///{tmp_path / 'expiryd.sqlite3'}") == {"SN1": 3}

"""What an operator meets: passwords that never show, a Redis that could evict
expiryd's state, a config it may not read, hostile key names, large values, dead
letters acted on one by one, and notification flags lost in a Redis restart."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.e2e.conftest import REPO, StartDaemon, assert_queue_settled, write_config
from tests.support.daemon import DaemonProcess, run_cli, setex
from tests.support.servers import MariaDB, RedisServer
from tests.support.shop import ORDER_ROUTES, create_orders, statuses

PASSWORD = "a/b#c?d@e%f!"
HOOK = '[[routes]]\npattern = "hook:{name}"\nhandler = "tests.support.hooks:save_value"\n'
BOOM = '[[routes]]\npattern = "boom:{x}"\nhandler = "tests.support.hooks:explode"\n'


def tricky_users(mariadb: MariaDB, redis_db: RedisServer, database: str) -> tuple[str, str]:
    with mariadb.admin() as admin, admin.cursor() as cursor:
        cursor.execute("CREATE USER IF NOT EXISTS 'tricky'@'%%' IDENTIFIED BY %s", (PASSWORD,))
        cursor.execute(f"GRANT ALL ON `{database}`.* TO 'tricky'@'%'")
    redis_db.client().acl_setuser(
        "tricky", enabled=True, passwords=[f"+{PASSWORD}"], keys=["*"], channels=["*"],
        commands=["+@all"],
    )  # fmt: skip
    return quote(PASSWORD, safe=""), database


@pytest.mark.parametrize("in_query", [False, True])
def test_passwords_with_url_delimiters_never_show(
    mariadb: MariaDB, mysql_url: str, redis_db: RedisServer, tmp_path: Path, in_query: bool
) -> None:
    encoded, database = tricky_users(mariadb, redis_db, mysql_url.rsplit("/", 1)[1])
    create_orders(mysql_url, {"SN1": 0})
    host = f"127.0.0.1:{mariadb.port}"
    if in_query:
        db_url = f"mysql+pymysql://tricky@{host}/{database}?password={encoded}"
        redis_url = f"redis://tricky@127.0.0.1:{redis_db.port}/15?password={encoded}"
    else:
        db_url = f"mysql+pymysql://tricky:{encoded}@{host}/{database}"
        redis_url = f"redis://tricky:{encoded}@127.0.0.1:{redis_db.port}/15"
    config = write_config(tmp_path / "shop.toml", redis_url, db_url)
    wrong = write_config(
        tmp_path / "wrong.toml",
        redis_url.replace(encoded, encoded + "x"),
        db_url.replace(encoded, encoded + "x"),
    )

    outputs = [run_cli("check", "--config", str(path)) for path in (config, wrong)]
    assert outputs[0].returncode == 0, outputs[0].stdout + outputs[0].stderr
    assert outputs[1].returncode == 1 and "FAIL" in outputs[1].stdout
    running = DaemonProcess(config, env={"PYTHONPATH": str(REPO)})
    try:
        running.wait_subscribed()
        setex(redis_db.client(), "order:cancel:SN1", 1)
        running.wait_for_event("expiry.handled")
    finally:
        running.stop()
    failing = run_cli("run", "--config", str(wrong), timeout=20)
    shown = "".join(
        [o.stdout + o.stderr for o in [*outputs, failing]] + running.raw + [running.stderr]
    )
    for secret in (PASSWORD, encoded, "e%f!", "a/b#c"):
        assert secret not in shown, f"{secret!r} shown"
    assert "***" in running.events("expiryd.started")[0]["database"]
    assert statuses(mysql_url) == {"SN1": 3}


def test_an_eviction_policy_that_could_drop_expiryds_state_is_refused_by_check(
    tmp_path: Path, sqlite_url: str, redis_db: RedisServer, start_daemon: StartDaemon
) -> None:
    create_orders(sqlite_url, {})
    client = redis_db.client()
    client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        config = write_config(tmp_path / "shop.toml", redis_db.url(), sqlite_url)
        checked = run_cli("check", "--config", str(config))
        daemon = start_daemon(sqlite_url)
        (warning,) = daemon.events("redis.eviction_unsafe")
    finally:
        client.config_set("maxmemory-policy", "noeviction")
    assert checked.returncode == 1
    assert "maxmemory-policy is allkeys-lru" in checked.stdout
    assert "CONFIG SET maxmemory-policy noeviction" in warning["error"]


def test_a_config_it_may_not_read_is_one_line_not_a_traceback() -> None:
    directory = Path(tempfile.mkdtemp(prefix="expiryd-perm-"))
    try:
        private = directory / "etc"
        private.mkdir()
        (private / "expiryd.toml").write_text('[redis]\nurl = "redis://127.0.0.1:1/15"\n')
        private.chmod(0)
        # root reads anything; without the capabilities that let it, it obeys the modes
        without_override = ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
                            "--bounding-set=-dac_override,-dac_read_search"]  # fmt: skip
        result = subprocess.run(
            [*(without_override if os.geteuid() == 0 else []), sys.executable, "-m", "expiryd",
             "check", "--config", str(private / "expiryd.toml")],
            capture_output=True, text=True, timeout=60, cwd="/",
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
    finally:
        private.chmod(stat.S_IRWXU)
        for path in sorted(directory.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        directory.rmdir()
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("expiryd: error: ") and "Permission denied" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_hostile_key_names_are_escaped_in_logs_and_dead_list(
    sqlite_url: str, redis_db: RedisServer, start_daemon: StartDaemon
) -> None:
    body = "[retry]\nattempts = 1\n" + BOOM
    daemon = start_daemon(sqlite_url, body, "--log-format", "console", wait=False)
    daemon.wait_for(lambda: "listener.subscribed" in "".join(daemon.raw), 15, "subscribed")
    hostile = "boom:\x1b[2J\x1b[31mred\u202e"
    setex(redis_db.client(), hostile.encode(), 1)
    daemon.wait_for(lambda: "expiry.handled" in "".join(daemon.raw), 15, "the line")
    listed = run_cli("dead", "list", "--config", str(daemon.config))
    for shown in ("".join(daemon.raw), listed.stdout):
        assert "\x1b[2J" not in shown and "\u202e" not in shown
        assert "\\x1b[2J" in shown and "\\u202e" in shown
    assert_queue_settled(redis_db, [daemon], dead=1)


def test_values_over_max_value_bytes_are_not_captured(
    sqlite_url: str, redis_db: RedisServer, start_daemon: StartDaemon, tmp_path: Path
) -> None:
    out = tmp_path / "values.jsonl"
    redis = "capture_values = true\nmax_value_bytes = 10"
    daemon = start_daemon(sqlite_url, HOOK, redis=redis, env={"HOOK_OUT": str(out)})
    client = redis_db.client()
    client.execute_command("SETEX", "hook:small", 1, "0123456789")
    client.execute_command("SETEX", "hook:large", 1, "0123456789a")
    daemon.wait_for_event("expiry.handled", 2, timeout=15)
    received = {r["key"]: r["value"] for r in map(json.loads, out.read_text().splitlines())}
    assert received == {"hook:small": "0123456789", "hook:large": None}
    assert daemon.events("ledger.value_not_captured")[0]["keys"] == 1
    assert_queue_settled(redis_db, [daemon])


def test_dead_letters_are_replayed_and_purged_by_key(
    sqlite_url: str, redis_db: RedisServer, start_daemon: StartDaemon
) -> None:
    daemon = start_daemon(sqlite_url, "[retry]\nattempts = 1\n" + BOOM)
    client = redis_db.client()
    for key in ("boom:1", "boom:2", "boom:3"):
        setex(client, key, 1)
    daemon.wait_for_event("expiry.handled", 3, timeout=15)
    config = str(daemon.config)
    purged = run_cli("dead", "purge", "boom:1", "--config", config)
    replayed = run_cli("dead", "replay", "boom:2", "--config", config)
    assert (purged.stdout.strip(), replayed.stdout.strip()) == (
        "1 dead letters removed", "1 dead letters queued again",
    )  # fmt: skip
    daemon.wait_for_event("expiry.handled", 4, timeout=15)  # boom:2 fails again
    listed = run_cli("dead", "list", "--json", "--config", config).stdout.splitlines()
    assert sorted(json.loads(line)["key"] for line in listed) == ["boom:2", "boom:3"]
    run_cli("dead", "purge", "boom:3", "--config", config)
    assert_queue_settled(redis_db, [daemon], dead=1)


def test_configure_redis_sets_the_flags_again_after_a_redis_restart(
    sqlite_url: str, redis_db: RedisServer, start_daemon: StartDaemon
) -> None:
    create_orders(sqlite_url, {"SN1": 0})
    daemon = start_daemon(sqlite_url, ORDER_ROUTES, "--configure-redis")
    redis_db.stop()
    redis_db.notify_flags = ""
    try:
        redis_db.start()
    finally:
        redis_db.notify_flags = "Egx"
    daemon.wait_subscribed(2)
    flags = redis_db.client().config_get("notify-keyspace-events")["notify-keyspace-events"]
    assert set(flags) >= set("Egx")
    setex(redis_db.client(), "order:cancel:SN1", 1)
    daemon.wait_for_event("expiry.handled", timeout=15)
    assert statuses(sqlite_url) == {"SN1": 3}
    assert_queue_settled(redis_db, [daemon])

"""`expiryd status` against a running daemon, and after it stopped."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tests.e2e.conftest import StartDaemon, write_config
from tests.support.daemon import DaemonProcess, run_cli, setex
from tests.support.servers import RedisServer

ACCEPT = '[[routes]]\npattern = "t:{n}"\nhandler = "tests.support.hooks:accept"\n'


def status(daemon: DaemonProcess) -> tuple[int, dict[str, Any]]:
    result = run_cli("status", "--config", str(daemon.config), "--json")
    assert result.stderr == ""
    return result.returncode, json.loads(result.stdout)


def wait_for_status(daemon: DaemonProcess, handled: int) -> dict[str, Any]:
    """The heartbeat is written every few seconds: wait for one that counts `handled`."""
    deadline = time.monotonic() + 20
    while True:
        code, report = status(daemon)
        counts = [n for d in report["daemons"] for o in d["handled"].values() for n in o.values()]
        if sum(counts) >= handled or time.monotonic() > deadline:
            return {"exit": code, **report}
        time.sleep(0.5)


def test_status_shows_the_live_daemon_what_it_handled_the_ledger_and_the_queue(
    start_daemon: StartDaemon, redis_db: RedisServer, sqlite_url: str
) -> None:
    daemon = start_daemon(sqlite_url, ACCEPT)
    daemon.wait_for_event("expiryd.ready")
    client = redis_db.client()
    setex(client, "t:1", 1)
    setex(client, "t:2", 1)
    setex(client, "t:later", 3600)
    daemon.wait_for_event("expiry.handled", 2)

    report = wait_for_status(daemon, handled=2)
    assert report["exit"] == 0 and report["healthy"] is True
    (me,) = report["daemons"]
    assert (me["pid"], me["mode"], me["alive"], me["subscribed"]) == (
        daemon.process.pid,
        "run",
        True,
        True,
    )
    assert me["handled"] == {"t:{n}": {"applied": 2}}
    assert report["ledger_keys"] == 1
    (upcoming,) = report["next_deadlines"]
    assert upcoming["key"] == "t:later" and 3000 < upcoming["due_in_s"] <= 3600
    assert report["jobs"] == {"ready": 0, "retrying": 0, "leased": 0, "dead": 0}

    screen = run_cli("status", "--config", str(daemon.config))
    assert screen.returncode == 0
    assert screen.stdout.startswith("expiryd: healthy\n")
    assert f"pid {daemon.process.pid}" in screen.stdout
    assert "t:{n}: 2 applied" in screen.stdout

    assert daemon.stop() == 0
    code, after = status(daemon)
    assert code == 1 and after["healthy"] is False
    assert [d["alive"] for d in after["daemons"]] == [False]
    text = run_cli("status", "--config", str(daemon.config))
    assert text.returncode == 1 and "NOT HEALTHY" in text.stdout and "gone" in text.stdout


def test_status_with_no_daemon_ever_run_is_unhealthy(
    tmp_path: Path, redis_db: RedisServer, sqlite_url: str
) -> None:
    config = write_config(tmp_path / "expiryd.toml", redis_db.url(), sqlite_url, ACCEPT)
    result = run_cli("status", "--config", str(config))
    assert result.returncode == 1
    assert "none has run" in result.stdout


def test_status_with_redis_out_of_reach_says_so_in_one_line(
    tmp_path: Path, sqlite_url: str
) -> None:
    config = write_config(
        tmp_path / "expiryd.toml", "redis://:hunter2@127.0.0.1:1/15", sqlite_url, ACCEPT
    )
    result = run_cli("status", "--config", str(config))
    assert result.returncode != 0 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("expiryd: error: Redis at redis://") and "hunter2" not in line

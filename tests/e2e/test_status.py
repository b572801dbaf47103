"""`expiryd status` against a running daemon, and after it stopped."""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.e2e.conftest import StartDaemon, assert_queue_settled, write_config
from tests.e2e.test_metrics import scrape, value
from tests.support.daemon import DaemonProcess, run_cli, setex
from tests.support.notify import NotifySocket
from tests.support.servers import RedisServer, free_port

ACCEPT = '[[routes]]\npattern = "t:{n}"\nhandler = "tests.support.hooks:accept"\n'
HANG = '[[routes]]\npattern = "hang:{n}"\nhandler = "tests.support.hooks:hang_until_released"\n'
WORK_LEASE = "[worker]\nlease_seconds = 2\nconcurrency = 1\n"
WATCHDOG_SECONDS = 2
"""systemd's watchdog interval, which is then how long a loop may be silent: a hung
handler counts as stalled after its lease plus this, not after defaults.STALL_SECONDS."""


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


def wait_for_report(
    daemon: DaemonProcess, what: str, predicate: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The first `status --json` for which `predicate` holds, with its exit code."""
    deadline = time.monotonic() + 20
    while True:
        code, report = status(daemon)
        report = {"exit": code, **report}
        if predicate(report):
            return report
        assert time.monotonic() < deadline, f"no status {what} within 20s: {report}"
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
    assert_queue_settled(redis_db, [daemon])


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


def test_a_stalled_loop_makes_status_not_healthy_until_it_turns_again(
    start_daemon: StartDaemon, redis_db: RedisServer, sqlite_url: str, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    port = free_port()
    address = f"@expiryd-test-{uuid.uuid4().hex}"
    notify = NotifySocket(address)
    try:
        body = HANG + WORK_LEASE + f'[metrics]\nlisten = "127.0.0.1:{port}"\n'
        env = {
            "NOTIFY_SOCKET": address,
            "WATCHDOG_USEC": str(WATCHDOG_SECONDS * 1_000_000),
            "HOOK_RELEASE": str(release),
        }
        daemon = start_daemon(sqlite_url, body, env=env)
        wait_for_report(daemon, "healthy", lambda r: r["exit"] == 0)
        assert value(scrape(port), "expiryd_up") == 1

        setex(redis_db.client(), "hang:1", 1)
        daemon.wait_for_event("loop.stalled", timeout=20)
        # The handler runs on past lease after lease, each time a `batch.slow`: a later
        # problem than the stall, which must not hide it.
        stalled = wait_for_report(
            daemon,
            "with the stall and a batch.slow after it",
            lambda r: r["exit"] == 1 and _last_problem(r) == "batch.slow",
        )
        assert stalled["healthy"] is False
        (stall,) = stalled["stalls"]
        assert (stall["host"], stall["pid"]) == (socket.gethostname(), daemon.process.pid)
        assert stall["loop"] == "worker-1" and stall["silent_s"] > WATCHDOG_SECONDS
        assert stalled["daemons"][0]["stalled"] == {"worker-1": stall["silent_s"]}
        assert value(scrape(port), "expiryd_up") == 0
        screen = run_cli("status", "--config", str(daemon.config))
        assert screen.returncode == 1
        verdict = screen.stdout.splitlines()[0]
        assert verdict.startswith("expiryd: NOT HEALTHY") and "worker-1" in verdict
        assert f"pid {daemon.process.pid}" in verdict
        assert "STALLED: worker-1 silent" in screen.stdout
        assert "last problem: batch.slow" in screen.stdout

        release.touch()
        daemon.wait_for_event("loop.resumed")
        resumed = wait_for_report(daemon, "healthy again", lambda r: r["exit"] == 0)
        assert resumed["healthy"] is True and resumed["stalls"] == []
        assert value(scrape(port), "expiryd_up") == 1
        screen = run_cli("status", "--config", str(daemon.config))
        assert screen.returncode == 0 and screen.stdout.startswith("expiryd: healthy\n")
        assert "STALLED" not in screen.stdout
    finally:
        release.touch()  # a failed check must not leave the handler hanging for a minute
        notify.close()
    assert_queue_settled(redis_db, [daemon])


def _last_problem(report: dict[str, Any]) -> str | None:
    (daemon,) = report["daemons"]
    return (daemon["last_problem"] or {}).get("event")

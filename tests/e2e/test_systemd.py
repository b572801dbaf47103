"""expiryd under systemd: the unit file as systemd-analyze reads it, and the notify
protocol as systemd hears it, through a datagram socket of the test's own."""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO, StartDaemon, assert_queue_settled
from tests.support.daemon import psetex_many, setex
from tests.support.notify import Message, NotifySocket
from tests.support.servers import RedisServer
from tests.support.shop import create_orders, rows, statuses

UNIT = REPO / "systemd" / "expiryd.service"
ACCEPT = '[[routes]]\npattern = "t:{n}"\nhandler = "tests.support.hooks:accept"\n'
HANG = '[[routes]]\npattern = "hang:{n}"\nhandler = "tests.support.hooks:hang_until_released"\n'
WATCHDOG_SECONDS = 2


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing: scripts/test installs Debian's systemd")
    return subprocess.run(
        ["systemd-analyze", *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def installed_unit(tmp_path: Path) -> Path:
    """The unit as `scripts/install-systemd` installs it, but with ExecStart= pointing at
    this checkout's expiryd (verify checks that the command exists)."""
    command = Path(sys.executable).with_name("expiryd")
    unit = tmp_path / "expiryd.service"
    unit.write_text(UNIT.read_text().replace("/opt/expiryd/venv/bin/expiryd", str(command)))
    return unit


def test_systemd_analyze_verify_accepts_the_unit_without_a_single_warning(
    installed_unit: Path,
) -> None:
    result = _analyze("verify", str(installed_unit))
    # verify exits 0 on unknown or misspelt settings too: only silence means all is well.
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_the_unit_is_as_locked_down_as_debians_redis_server_unit() -> None:
    result = _analyze("security", "--offline=true", str(UNIT))
    found = re.search(r"Overall exposure level for expiryd\.service: ([\d.]+)", result.stdout)
    assert found, result.stdout + result.stderr
    assert float(found.group(1)) <= 1.2, result.stdout


@pytest.fixture(params=["path", "abstract"])
def notify_address(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "abstract":
        yield f"@expiryd-test-{uuid.uuid4().hex}"
        return
    # A short directory of its own: a socket path must fit in 108 bytes.
    directory = tempfile.mkdtemp(prefix="expiryd-notify-")
    yield f"{directory}/notify"
    shutil.rmtree(directory, ignore_errors=True)


def _systemd_env(address: str, **extra: str) -> dict[str, str]:
    return {
        "NOTIFY_SOCKET": address,
        "WATCHDOG_USEC": str(WATCHDOG_SECONDS * 1_000_000),
        **extra,
    }


def _gaps(messages: list[Message]) -> list[float]:
    return [b.at - a.at for a, b in itertools.pairwise(messages)]


def test_systemd_hears_ready_once_subscribed_then_watchdog_status_and_stopping(
    start_daemon: StartDaemon, redis_db: RedisServer, sqlite_url: str, notify_address: str
) -> None:
    watcher = redis_db.client()
    channel = "__keyevent@15__:expired"
    notify = NotifySocket(notify_address, on_ready=lambda: watcher.pubsub_numsub(channel))
    try:
        daemon = start_daemon(sqlite_url, ACCEPT, wait=False, env=_systemd_env(notify_address))
        ready = notify.wait_for("READY", "1")
        notify.wait_for("STATUS")
        # Subscribed, as Redis itself saw it at the moment READY=1 came.
        assert ready.observed == [(channel.encode(), 1)]
        first = [m for m in notify.with_field("STATUS") if m.at >= ready.at]
        assert first and first[0].fields["STATUS"].startswith("subscribed; jobs: 0 ready")
        (said_ready,) = daemon.wait_for_event("expiryd.ready")
        (synced,) = daemon.events("ledger.synced")
        assert daemon.lines.index(synced) < daemon.lines.index(said_ready)

        setex(redis_db.client(), "t:1", 1)
        daemon.wait_for_event("expiry.handled", timeout=15)
        status = notify.wait_for("STATUS", "handled 1,", timeout=15)
        assert "jobs: 0 ready, 0 retrying, 0 leased, 0 dead" in status.fields["STATUS"]

        pings = _wait_for_pings(notify, after=ready.at, count=5)
        # Within the interval systemd enforces, and not much more often than half of it.
        assert max(_gaps(pings)) < WATCHDOG_SECONDS
        assert min(_gaps(pings)) > WATCHDOG_SECONDS / 4

        assert daemon.stop() == 0
        stopping = notify.wait_for("STOPPING", "1", timeout=5)
        assert int(stopping.fields["EXTEND_TIMEOUT_USEC"]) >= 30_000_000  # grace_seconds
    finally:
        notify.close()
    assert_queue_settled(redis_db, [daemon])


def _wait_for_pings(notify: NotifySocket, after: float, count: int) -> list[Message]:
    deadline = time.monotonic() + count * WATCHDOG_SECONDS + 10
    while time.monotonic() < deadline:
        pings = [m for m in notify.with_field("WATCHDOG") if m.at > after]
        if len(pings) >= count:
            return pings
        time.sleep(0.1)
    raise AssertionError(f"fewer than {count} WATCHDOG=1 after READY: {notify.messages}")


def test_a_handler_that_never_returns_stops_the_watchdog_until_it_does(
    start_daemon: StartDaemon,
    redis_db: RedisServer,
    sqlite_url: str,
    notify_address: str,
    tmp_path: Path,
) -> None:
    release = tmp_path / "release"
    notify = NotifySocket(notify_address)
    try:
        body = HANG + "[worker]\nlease_seconds = 1\nconcurrency = 1\n"
        env = _systemd_env(notify_address, HOOK_RELEASE=str(release))
        daemon = start_daemon(sqlite_url, body, env=env)
        ready = notify.wait_for("READY", "1")
        _wait_for_pings(notify, after=ready.at, count=2)

        setex(redis_db.client(), "hang:1", 1)
        (stalled,) = daemon.wait_for_event("loop.stalled", timeout=20)
        assert stalled["thread"] == "worker-1" and stalled["watchdog"] is True
        time.sleep(WATCHDOG_SECONDS + 1)
        # Past the interval with no WATCHDOG=1: systemd would have killed it by now.
        last_ping = notify.with_field("WATCHDOG")[-1].at
        assert time.monotonic() - last_ping > WATCHDOG_SECONDS

        release.touch()
        daemon.wait_for_event("loop.resumed")
        (handled,) = daemon.wait_for_event("expiry.handled")
        assert handled["outcome"] == "applied"
        _wait_for_pings(notify, after=time.monotonic(), count=1)
    finally:
        notify.close()
    assert_queue_settled(redis_db, [daemon])


CONFINE = [sys.executable, "-m", "tests.support.confine"]


def test_the_confinement_used_below_does_refuse_what_the_unit_forbids() -> None:
    probe = (
        "import mmap, os\n"
        "for attempt in (lambda: mmap.mmap(-1, 4096, prot=7), lambda: os.chroot('/')):\n"
        "    try:\n"
        "        attempt()\n"
        "        print('allowed')\n"
        "    except PermissionError:\n"
        "        print('refused')\n"
    )
    free = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    confined = subprocess.run(
        [*CONFINE, sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO
    )
    assert free.stdout.split() == ["allowed", "allowed"], free.stderr
    assert confined.stdout.split() == ["refused", "refused"], confined.stderr


@pytest.mark.mysql
def test_the_daemon_runs_under_the_units_syscall_filter_and_write_xor_execute(
    start_daemon: StartDaemon, redis_db: RedisServer, mysql_url: str
) -> None:
    create_orders(mysql_url, {"SN1": 0})
    daemon = start_daemon(mysql_url, wrapper=CONFINE)
    setex(redis_db.client(), "order:cancel:SN1", 1)
    (handled,) = daemon.wait_for_event("expiry.handled")
    assert handled["outcome"] == "applied"
    assert statuses(mysql_url) == {"SN1": 3}
    assert daemon.stop() == 0
    assert "Traceback" not in daemon.stderr
    assert_queue_settled(redis_db, [daemon])


SLEEPY = (
    '[[routes]]\npattern = "sleepy:{n}"\nhandler = "sql"\n'
    'sql = "SELECT SLEEP(0.4) FROM DUAL WHERE :n IS NOT NULL"\n'
)


@pytest.mark.mysql
def test_a_long_group_of_quick_statements_is_not_taken_for_a_stuck_one(
    start_daemon: StartDaemon, redis_db: RedisServer, mysql_url: str, notify_address: str
) -> None:
    """Ten statements of 0.4 s in one group: 4 s, past the 1 s lease plus the 2 s
    watchdog. Each statement is progress, so no loop counts as stalled."""
    body = SLEEPY + "[worker]\nlease_seconds = 1\nconcurrency = 1\n"
    notify = NotifySocket(notify_address)
    try:
        daemon = start_daemon(mysql_url, body, env=_systemd_env(notify_address))
        ready = notify.wait_for("READY", "1")
        psetex_many(redis_db.client(), [f"sleepy:{n}" for n in range(10)], 500)
        lines = daemon.wait_for_event("expiry.handled", 10, timeout=40)
        assert {line["outcome"] for line in lines} == {"applied"}
        # One group, one transaction: its ten inbox rows were written by one insert, with
        # one time; groups of their own would be 0.4 s apart or more.
        times = rows(mysql_url, "SELECT applied_at_ms FROM expiryd_applied")
        assert len(times) == 10 and len(set(times)) == 1, times
        assert not daemon.events("loop.stalled")
        pings = [m for m in notify.with_field("WATCHDOG") if m.at > ready.at]
        assert max(_gaps(pings)) < WATCHDOG_SECONDS
    finally:
        notify.close()
    assert_queue_settled(redis_db, [daemon])

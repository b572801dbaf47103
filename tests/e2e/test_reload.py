"""SIGHUP: a changed config is taken up in place, without losing or doubling an expiry;
a wrong one is refused in one line and the daemon goes on as it was."""

from __future__ import annotations

import signal
import socket
import uuid
from pathlib import Path

from tests.e2e.conftest import StartDaemon
from tests.support.daemon import DaemonProcess, psetex_many, setex
from tests.support.hooks import CALLS_TABLE
from tests.support.notify import NotifySocket
from tests.support.servers import RedisServer, free_port
from tests.support.shop import ORDER_ROUTES, create_orders, execute, statuses

RECORD = '[[routes]]\npattern = "r:{n}"\nhandler = "tests.support.hooks:record_call"\n'
SLOW = '[[routes]]\npattern = "slow:{n}"\nhandler = "tests.support.hooks:record_call_slowly"\n'


def reload_with(daemon: DaemonProcess, body: str, count: int) -> None:
    assert daemon.config is not None
    daemon.config.write_text(daemon.config.read_text().split("[[routes]]")[0] + body)
    daemon.process.send_signal(signal.SIGHUP)
    daemon.wait_for_event("expiryd.started", count, timeout=40)


def test_a_changed_config_is_taken_up_in_place_and_no_expiry_is_lost_or_doubled(
    start_daemon: StartDaemon, redis_db: RedisServer, sqlite_url: str
) -> None:
    execute(sqlite_url, CALLS_TABLE)
    address = f"@expiryd-reload-{uuid.uuid4().hex}"
    notify = NotifySocket(address)
    env = {"HOOK_DATABASE_URL": sqlite_url, "NOTIFY_SOCKET": address}
    daemon = start_daemon(sqlite_url, RECORD, env=env)
    pid = daemon.process.pid
    first_ready = notify.wait_for("READY")
    keys = [f"r:{n}" for n in range(3000)]
    # Expiring before, during and after the restart.
    psetex_many(redis_db.client(), keys, [200 + n for n in range(3000)])
    create_orders(sqlite_url, {"SN1": 0})
    reload_with(daemon, RECORD + ORDER_ROUTES, count=2)

    (reloading,) = daemon.events("config.reloading")
    assert reloading["changed"] == ["routes"]
    assert daemon.process.pid == pid and daemon.running
    daemon.wait_subscribed(2)
    setex(redis_db.client(), "order:cancel:SN1", 1)  # a route the old config did not have
    daemon.wait_for(lambda: statuses(sqlite_url).get("SN1") == 3, 20, "SN1 cancelled")
    daemon.wait_for(lambda: _calls(sqlite_url) >= len(keys), 60, "every r: key recorded")
    assert _calls(sqlite_url) == len(keys)
    assert _distinct_calls(sqlite_url) == len(keys)
    # systemd was told: reloading (with the time, as sd_notify(3) asks), then ready again.
    reloading = notify.wait_for("RELOADING", "1")
    assert reloading.at > first_ready.at and int(reloading.fields["MONOTONIC_USEC"]) > 0
    assert [m for m in notify.with_field("READY") if m.at > reloading.at]
    assert not notify.with_field("STOPPING")
    notify.close()


def test_a_stop_during_a_reload_stops_instead_of_starting_again(
    start_daemon: StartDaemon, redis_db: RedisServer, sqlite_url: str
) -> None:
    execute(sqlite_url, CALLS_TABLE)
    env = {"HOOK_DATABASE_URL": sqlite_url, "HOOK_SLEEP": "2"}
    daemon = start_daemon(sqlite_url, SLOW, env=env)
    setex(redis_db.client(), "slow:1", 1)
    client = redis_db.client()
    daemon.wait_for(lambda: client.zcard("expiryd:jobs:leases") == 1, 20, "the job leased")
    reload_body = SLOW + "[worker]\nconcurrency = 1\n"
    assert daemon.config is not None
    daemon.config.write_text(daemon.config.read_text().split("[[routes]]")[0] + reload_body)
    daemon.process.send_signal(signal.SIGHUP)
    daemon.wait_for_event("config.reloading")
    daemon.process.send_signal(signal.SIGTERM)  # while the reload waits for the slow group
    assert daemon.process.wait(30) == 0
    assert len(daemon.events("expiryd.started")) == 1
    (stopping,) = daemon.events("expiryd.stopping")
    assert stopping["signal"] == "SIGTERM"
    assert _calls(sqlite_url) == 1


def _calls(url: str) -> int:
    return _scalar(url, "SELECT COUNT(*) FROM calls")


def _distinct_calls(url: str) -> int:
    return _scalar(url, "SELECT COUNT(DISTINCT key_name) FROM calls")


def _scalar(url: str, sql: str) -> int:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.connect() as connection:
        value = int(connection.execute(text(sql)).scalar_one())
    engine.dispose()
    return value


def test_a_config_that_does_not_load_or_moves_the_queue_is_refused_and_work_goes_on(
    start_daemon: StartDaemon, redis_db: RedisServer, sqlite_url: str, tmp_path: Path
) -> None:
    create_orders(sqlite_url, {"SN1": 0, "SN2": 0})
    daemon = start_daemon(sqlite_url, ORDER_ROUTES)
    assert daemon.config is not None
    good = daemon.config.read_text()

    daemon.config.write_text(good + "\n[worker]\nconcurency = 2\n")
    daemon.process.send_signal(signal.SIGHUP)
    (failed,) = daemon.wait_for_event("config.reload_failed")
    assert "concurency" in failed["error"] and failed["level"] == "error"

    daemon.config.write_text(good.replace("[redis]\n", '[redis]\nprefix = "other:"\n', 1))
    daemon.process.send_signal(signal.SIGHUP)
    (refused,) = daemon.wait_for_event("config.reload_refused")
    assert "prefix" in refused["error"]

    daemon.config.write_bytes(good.encode() + b"\n# caf\xe9\n")  # Latin-1, not UTF-8
    daemon.process.send_signal(signal.SIGHUP)
    daemon.wait_for_event("config.reload_failed", 2)
    assert "not UTF-8" in daemon.events("config.reload_failed")[1]["error"]

    # Sound as a file, but its Redis refuses the new credentials, or its metrics port is taken.
    stranger = good.replace("redis://127.0.0.1", "redis://nobody:wrong-pw@127.0.0.1", 1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for count, text in enumerate(
            (stranger, good + f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n'), start=3
        ):
            daemon.config.write_text(text)
            daemon.process.send_signal(signal.SIGHUP)
            daemon.wait_for_event("config.reload_failed", count)
    errors = [line["error"] for line in daemon.events("config.reload_failed")[2:]]
    assert "wrong-pw" not in errors[0] and "AuthenticationError" in errors[0]
    assert "Address already in use" in errors[1]

    daemon.config.write_text(good)
    daemon.process.send_signal(signal.SIGHUP)
    daemon.wait_for_event("config.unchanged")

    setex(redis_db.client(), "order:cancel:SN1", 1)
    daemon.wait_for_event("expiry.handled")
    assert statuses(sqlite_url)["SN1"] == 3
    assert len(daemon.events("expiryd.started")) == 1


def test_a_stop_right_after_a_reload_stopped_the_daemon_is_not_lost(
    start_daemon: StartDaemon, redis_db: RedisServer, sqlite_url: str
) -> None:
    """The last moments before the exec (the metrics server closing): a SIGTERM there
    must stop expiryd, not be swallowed by the process about to be replaced."""
    body = RECORD + f'[metrics]\nlisten = "127.0.0.1:{free_port()}"\n'
    execute(sqlite_url, CALLS_TABLE)
    daemon = start_daemon(sqlite_url, body, env={"HOOK_DATABASE_URL": sqlite_url})
    assert daemon.config is not None
    daemon.config.write_text(daemon.config.read_text() + "\n[worker]\nconcurrency = 1\n")
    daemon.process.send_signal(signal.SIGHUP)
    daemon.wait_for_event("expiryd.stopped")
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.process.wait(20) == 0
    # Either it never executed itself again, or the new process took the stop at once.
    if len(daemon.events("expiryd.started")) == 2:
        assert daemon.events("expiryd.stopping")[-1]["signal"] == "SIGTERM"

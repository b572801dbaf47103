"""SIGHUP: a changed config is applied in place, without unsubscribing, losing or doubling
an expiry; a wrong one is refused in one line and the daemon goes on as it was."""

from __future__ import annotations

import signal
import socket
import threading
import time
import uuid
from pathlib import Path

import redis

from tests.e2e.conftest import REPO, StartDaemon, assert_queue_settled
from tests.support.daemon import DaemonProcess, Line, psetex_many, setex
from tests.support.hooks import CALLS_TABLE
from tests.support.notify import NotifySocket
from tests.support.servers import RedisServer
from tests.support.shop import ORDER_ROUTES, create_orders, execute, statuses

RECORD = '[[routes]]\npattern = "r:{n}"\nhandler = "tests.support.hooks:record_call"\n'
SLOW = '[[routes]]\npattern = "slow:{n}"\nhandler = "tests.support.hooks:record_call_slowly"\n'


def reload_with(daemon: DaemonProcess, body: str, count: int = 1) -> list[Line]:
    assert daemon.config is not None
    daemon.config.write_text(daemon.config.read_text().split("[[routes]]")[0] + body)
    daemon.process.send_signal(signal.SIGHUP)
    return daemon.wait_for_event("config.reloaded", count, timeout=40)


class Producer:
    """Sets a key with a short TTL every 20 ms until stopped, as a shop's services do."""

    def __init__(self, client: redis.Redis) -> None:
        self.client, self.keys = client, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def __enter__(self) -> Producer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            key = f"r:p{len(self.keys)}"
            self.client.psetex(key, 100, "x")
            self.keys.append(key)


def test_a_reload_applies_routes_and_workers_in_place_and_never_stops_hearing_redis(
    start_daemon: StartDaemon, redis_db: RedisServer, sqlite_url: str
) -> None:
    execute(sqlite_url, CALLS_TABLE)
    create_orders(sqlite_url, {"SN1": 0, "SN2": 0})
    address = f"@expiryd-reload-{uuid.uuid4().hex}"
    notify = NotifySocket(address)
    env = {"HOOK_DATABASE_URL": sqlite_url, "NOTIFY_SOCKET": address}
    daemon = start_daemon(sqlite_url, RECORD, env=env)
    pid = daemon.process.pid
    first_ready = notify.wait_for("READY")
    client = redis_db.client()
    keys = [f"r:{n}" for n in range(3000)]
    # Expiring before, during and after the reload.
    psetex_many(client, keys, [200 + n for n in range(3000)])
    with Producer(redis_db.client()) as producer:
        time.sleep(0.5)
        setex(client, "order:cancel:SN2", 2)  # a timer deleted while the reload runs
        assert daemon.config is not None
        body = RECORD + ORDER_ROUTES + "[worker]\nconcurrency = 3\n"
        daemon.config.write_text(daemon.config.read_text().split("[[routes]]")[0] + body)
        daemon.process.send_signal(signal.SIGHUP)
        client.delete("order:cancel:SN2")  # while the reload runs
        (reloaded,) = daemon.wait_for_event("config.reloaded", timeout=40)
        time.sleep(1)
    assert reloaded["changed"] == ["routes", "worker"]
    assert daemon.process.pid == pid and daemon.running
    assert len(daemon.events("expiryd.started")) == 1
    assert len(daemon.events("listener.subscribed")) == 1  # never unsubscribed
    setex(client, "order:cancel:SN1", 1)  # a route the old config did not have
    daemon.wait_for(lambda: statuses(sqlite_url).get("SN1") == 3, 20, "SN1 cancelled")
    everything = len(keys) + len(producer.keys)
    daemon.wait_for(lambda: _calls(sqlite_url) >= everything, 60, "every r: key recorded")
    assert _calls(sqlite_url) == _distinct_calls(sqlite_url) == everything
    time.sleep(1.5)  # SN2's old deadline has passed
    assert statuses(sqlite_url)["SN2"] == 0
    assert not [line for line in daemon.handled() if line["key"] == "order:cancel:SN2"]
    assert {line["thread"] for line in daemon.events("loop.stalled")} == set()
    # systemd was told: reloading (with the time, as sd_notify(3) asks), then ready again.
    reloading = notify.wait_for("RELOADING", "1")
    assert reloading.at > first_ready.at and int(reloading.fields["MONOTONIC_USEC"]) > 0
    assert [m for m in notify.with_field("READY") if m.at > reloading.at]
    assert not notify.with_field("STOPPING")
    notify.close()
    assert_queue_settled(redis_db, [daemon])


def test_a_reload_does_not_wait_for_the_group_in_hand_and_a_stop_after_it_stops(
    start_daemon: StartDaemon, redis_db: RedisServer, sqlite_url: str
) -> None:
    execute(sqlite_url, CALLS_TABLE)
    env = {"HOOK_DATABASE_URL": sqlite_url, "HOOK_SLEEP": "3"}
    daemon = start_daemon(sqlite_url, SLOW + "[worker]\nconcurrency = 2\n", env=env)
    setex(redis_db.client(), "slow:1", 1)
    client = redis_db.client()
    daemon.wait_for(lambda: client.zcard("expiryd:jobs:leases") == 1, 20, "the job leased")
    reload_with(daemon, SLOW + "[worker]\nconcurrency = 1\n")
    assert _calls(sqlite_url) == 0  # the slow call still runs
    daemon.process.send_signal(signal.SIGHUP)
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.process.wait(30) == 0
    assert len(daemon.events("expiryd.started")) == 1
    (stopping,) = daemon.events("expiryd.stopping")
    assert stopping["signal"] == "SIGTERM"
    assert _calls(sqlite_url) == 1  # the group in hand was finished, once
    assert_queue_settled(redis_db, [daemon])


def test_handler_code_is_built_in_place_and_a_change_on_disk_is_named(
    start_daemon: StartDaemon, redis_db: RedisServer, sqlite_url: str, tmp_path: Path
) -> None:
    module = tmp_path / "shophooks.py"
    module.write_text("def first(expiry):\n    return True\n")
    route = '[[routes]]\npattern = "h:{n}"\nhandler = "shophooks:%s"\n'
    env = {"PYTHONPATH": f"{tmp_path}:{REPO}"}
    daemon = start_daemon(sqlite_url, route % "first", env=env)
    time.sleep(1.1)  # a later modification time than the daemon's start
    module.write_text(module.read_text() + "\ndef second(expiry):\n    return False\n")
    assert daemon.config is not None
    daemon.config.write_text(daemon.config.read_text().split("[[routes]]")[0] + route % "second")
    daemon.process.send_signal(signal.SIGHUP)
    (failed,) = daemon.wait_for_event("config.reload_failed")
    assert "already loaded it" in failed["error"] and "restart" in failed["error"]

    # A module first imported by this reload is new, not changed since it was loaded.
    (tmp_path / "newhooks.py").write_text("def third(expiry):\n    return True\n")
    new_route = '[[routes]]\npattern = "n:{n}"\nhandler = "newhooks:third"\n'
    (reloaded,) = reload_with(daemon, route % "first" + new_route + "[worker]\nbatch_size = 10\n")
    assert reloaded["code_changed_on_disk"] == ["shophooks"]
    setex(redis_db.client(), "h:1", 1)
    (handled,) = daemon.wait_for_event("expiry.handled")
    assert handled["outcome"] == "applied"  # the code it loaded at start
    assert_queue_settled(redis_db, [daemon])


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

    # [redis] changes wait for a restart; the probe tells the same server from another.
    url = redis_db.url()
    spellings = (
        (url.replace("127.0.0.1", "localhost", 1), "the same Redis server and DB"),
        (url.rsplit("/", 1)[0] + "/14", "another Redis server or DB"),
        (url.replace("redis://", "redis://nobody:wrong-pw@", 1), "does not answer"),
    )
    for count, (other, said) in enumerate(spellings, start=2):
        daemon.config.write_text(good.replace(url, other, 1))
        daemon.process.send_signal(signal.SIGHUP)
        refused = daemon.wait_for_event("config.reload_refused", count)[-1]
        assert said in refused["error"], refused
        assert "wrong-pw" not in refused["error"]

    # Sound as a file, but a table is missing, or its metrics port is taken.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for count, text in enumerate(
            (
                good + '\n[orders]\ntable = "nope"\n',
                good + f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n',
            ),
            start=3,
        ):
            daemon.config.write_text(text)
            daemon.process.send_signal(signal.SIGHUP)
            daemon.wait_for_event("config.reload_failed", count)
    errors = [line["error"] for line in daemon.events("config.reload_failed")[2:]]
    assert "nope" in errors[0]
    assert "Address already in use" in errors[1]

    daemon.config.write_text(good)
    daemon.process.send_signal(signal.SIGHUP)
    daemon.wait_for_event("config.unchanged")

    setex(redis_db.client(), "order:cancel:SN1", 1)
    daemon.wait_for_event("expiry.handled")
    assert statuses(sqlite_url)["SN1"] == 3
    assert len(daemon.events("expiryd.started")) == 1
    assert_queue_settled(redis_db, [daemon])

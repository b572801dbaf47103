from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tests.support.daemon import DaemonProcess
from tests.support.servers import RedisServer
from tests.support.shop import ORDER_ROUTES

REPO = Path(__file__).parents[2]
SETTLE_SECONDS = 30

StartDaemon = Callable[..., DaemonProcess]


def write_config(
    path: Path, redis_url: str, database_url: str, body: str = ORDER_ROUTES, redis: str = ""
) -> Path:
    path.write_text(
        f'[redis]\nurl = "{redis_url}"\n{redis}\n[database]\nurl = "{database_url}"\n{body}'
    )
    return path


@pytest.fixture
def start_daemon(tmp_path: Path, redis_db: RedisServer) -> Iterator[StartDaemon]:
    """Start `expiryd run` on a config; every daemon started is stopped at the end of the
    test. A test that expects the job queue settled says so itself, at its end, with
    `assert_queue_settled`: a teardown that asserts fails a test whose body passed."""
    started: list[DaemonProcess] = []

    def start(
        database_url: str,
        body: str = ORDER_ROUTES,
        *args: str,
        wait: bool = True,
        redis: str = "",
        env: dict[str, str] | None = None,
        wrapper: Sequence[str] = (),
    ) -> DaemonProcess:
        config = write_config(tmp_path / "expiryd.toml", redis_db.url(), database_url, body, redis)
        env = {"PYTHONPATH": str(REPO), **(env or {})}
        daemon = DaemonProcess(config, args, env=env, wrapper=wrapper)
        started.append(daemon)
        if wait:
            daemon.wait_subscribed()
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


def assert_queue_settled(
    redis_db: RedisServer, daemons: Sequence[DaemonProcess], dead: int = 0
) -> None:
    """Once the daemons still running have had up to `SETTLE_SECONDS` to finish, nothing is
    ready or leased, no lease has an owner, and the only job records left are the `dead`
    dead letters the test expects."""
    client = redis_db.client()
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        ready, leased = client.zcard("expiryd:jobs:ready"), client.zcard("expiryd:jobs:leases")
        if ready == leased == 0 or not any(d.running for d in daemons):
            break
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    counts = (
        ready,
        leased,
        client.zcard("expiryd:jobs:dead"),
        client.hlen("expiryd:jobs"),
        client.hlen("expiryd:jobs:owners"),
    )
    tail = daemons[-1].output() if daemons else ""
    # Every record left is a dead letter's, and no lease owner outlives its lease.
    assert counts == (0, 0, dead, dead, 0), (
        f"queue at the end (ready, leased, dead, records, owners): {counts}\n{tail}"
    )

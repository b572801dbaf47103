from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import redis

from tests.support.daemon import DaemonProcess, psetex_many
from tests.support.servers import RedisServer
from tests.support.shop import ORDER_ROUTES, add_audit, audit, create_orders

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


# For the Sentinel and Cluster tests: daemons on a topology's URL, orders whose changes
# an audit trigger counts.

TOPOLOGY_WORKER = "[worker]\nlease_seconds = 5\ngrace_seconds = 10\n"


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    """The daemons a test starts with `start_on`, each stopped at its end."""
    started: list[DaemonProcess] = []
    yield started
    for daemon in started:
        daemon.stop()


def start_on(
    tmp_path: Path,
    daemons: list[DaemonProcess],
    redis_url: str,
    database_url: str,
    *args: str,
    listeners: int = 1,
) -> DaemonProcess:
    """`expiryd run` on the order routes, once each of its `listeners` has subscribed."""
    body = TOPOLOGY_WORKER + ORDER_ROUTES
    config = write_config(tmp_path / "expiryd.toml", redis_url, database_url, body)
    daemon = DaemonProcess(config, args, env={"PYTHONPATH": str(REPO)})
    daemons.append(daemon)
    daemon.wait_subscribed(listeners)
    return daemon


def orders(url: str, first: int, count: int, create: bool = True) -> list[str]:
    """Unpaid orders SN<first>..., in a table made (with its audit) when `create`."""
    numbers = [f"SN{n:06d}" for n in range(first, first + count)]
    create_orders(url, dict.fromkeys(numbers, 0), create=create)
    if create:
        add_audit(url)
    return numbers


def keys(numbers: list[str]) -> set[str]:
    return {f"order:cancel:{n}" for n in numbers}


def cancel_spread(client: redis.Redis, numbers: list[str], first_ms: int, over_ms: int) -> None:
    """Deadlines spread evenly over `over_ms`, the first `first_ms` from now."""
    ttls = [first_ms + i * over_ms // len(numbers) for i in range(len(numbers))]
    psetex_many(client, [f"order:cancel:{n}" for n in numbers], ttls)


def wait_audited(daemon: DaemonProcess, url: str, count: int, timeout: float = 60) -> None:
    daemon.wait_for(lambda: len(audit(url)) >= count, timeout, f"{count} orders cancelled")


def assert_handled_once(daemons: list[DaemonProcess], numbers: list[str]) -> None:
    """Each order's expiry queued under one id by all of `daemons`: a second id for it
    fails this, even where the orders' status guard turned its job into `skipped`. (A job
    run again under the same id, by a retry or after a lapsed lease, is the inbox's.)"""
    ids: dict[str, set[str]] = {key: set() for key in keys(numbers)}
    for daemon in daemons:
        for line in daemon.handled():
            ids.setdefault(line["key"], set()).add(line["expiry_id"])
    twice = sorted(key for key, seen in ids.items() if len(seen) > 1)
    never = sorted(key for key, seen in ids.items() if not seen)
    assert twice == [] and never == [], f"two ids: {len(twice)} {twice[:5]}; never: {never[:5]}"


def assert_each_once(url: str, numbers: list[str]) -> None:
    changed = Counter(audit(url))
    assert sorted(changed) == sorted(numbers)
    twice = [n for n, times in changed.items() if times > 1]
    assert twice == [], f"cancelled more than once: {twice[:5]}"

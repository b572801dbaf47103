"""Redis Sentinel: expiryd follows the primary across failovers, against a real group of
redis-server processes (a primary, a replica, three sentinels) and MariaDB.

"Exactly once" is read from the audit trigger (one row per changed order)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    assert_each_once,
    assert_handled_once,
    assert_queue_settled,
    cancel_spread,
    keys,
    orders,
    start_on,
    wait_audited,
    write_config,
)
from tests.support.daemon import DaemonProcess, run_cli
from tests.support.shop import ORDER_ROUTES, statuses
from tests.support.topology import SentinelSetup

pytestmark = pytest.mark.topology


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[SentinelSetup]:
    setup = SentinelSetup(tmp_path / "sentinel")
    setup.start()
    yield setup
    setup.stop()


def subscribed_on(setup: SentinelSetup, address: tuple[str, int]) -> int:
    """How many pub/sub clients the node at `address` has."""
    return len(setup.server_at(address).client().client_list(_type="pubsub"))


@pytest.mark.mysql
def test_a_failover_mid_burst_cancels_every_order_once_and_two_daemons_follow_the_primary(
    sentinel: SentinelSetup, daemons: list[DaemonProcess], tmp_path: Path, mysql_url: str
) -> None:
    first = orders(mysql_url, 0, 3000)
    daemon = start_on(tmp_path, daemons, sentinel.url(), mysql_url)
    other = start_on(tmp_path, daemons, sentinel.url(), mysql_url)
    cancel_spread(sentinel.client(), first, 1000, 6000)
    wait_audited(daemon, mysql_url, 1000)

    old = sentinel.primary_address()
    new = sentinel.failover()
    assert new != old
    # The old primary stays a primary, still expiring its keys, until the sentinels turn
    # it into a replica some 10-15 s later. Keys set on the new one and due before that
    # are heard only by a listener that moved there: one that waits for the demotion
    # finds them gone, with no deadline recorded, and they are lost.
    soon = orders(mysql_url, 10_000, 200, create=False)
    cancel_spread(sentinel.client(), soon, 3000, 200)
    wait_audited(daemon, mysql_url, len(first) + len(soon))
    daemon.wait_for_event("redis.primary_changed")
    daemon.wait_for(lambda: subscribed_on(sentinel, new) >= 2, 10, "two subscribers on the new")
    assert_each_once(mysql_url, first + soon)

    # Back to the first node, once it replicates from the new primary; then new keys.
    sentinel.wait_demoted(old)
    assert sentinel.failover() == old
    # Due after expiryd has followed the switch (about a second): a key set on the new
    # primary and due before it listens there is never heard of, as in any outage.
    second = orders(mysql_url, 3000, 1000, create=False)
    cancel_spread(sentinel.client(), second, 3000, 2000)
    wait_audited(daemon, mysql_url, len(first) + len(soon) + len(second))
    assert_each_once(mysql_url, first + soon + second)
    for each in (daemon, other):
        assert len(each.events("redis.primary_changed")) >= 2
        assert each.events("expiry.dead") == []
    assert daemon.handled() and other.handled(), "one daemon did all the work"
    assert_handled_once([daemon, other], first + soon + second)
    assert_queue_settled(sentinel, daemons)  # type: ignore[arg-type]


@pytest.mark.mysql
def test_a_failover_that_loses_the_last_writes_loses_only_keys_the_new_primary_never_had(
    sentinel: SentinelSetup, daemons: list[DaemonProcess], tmp_path: Path, mysql_url: str
) -> None:
    """The replica stops reading its primary's stream; the primary takes more writes and
    dies; the replica, promoted, never had them. What the README says of it, shown:
    - `kept`: keys (and deadlines) from before the lag are handled, once;
    - `expired`: keys due during the lag, handled on the old primary, whose claims and
      settles were lost: they expire again on the new one and are found already applied;
    - `lost`: keys set on the old primary during the lag never existed for the new one."""
    kept = orders(mysql_url, 0, 300)
    expired = orders(mysql_url, 1000, 300, create=False)
    lost = orders(mysql_url, 2000, 300, create=False)
    daemon = start_on(tmp_path, daemons, sentinel.url(), mysql_url)
    old = sentinel.client()
    cancel_spread(old, kept, 14_000, 1000)
    cancel_spread(old, expired, 3000, 500)
    time.sleep(0.5)  # the deadlines recorded, and replicated

    replica = sentinel.replica.process
    assert replica is not None
    os.kill(replica.pid, signal.SIGSTOP)
    try:
        # More than the socket buffers hold, so that what follows stays on the primary.
        for n in range(40):
            old.set(f"padding:{n}", b"x" * 1_000_000)
        cancel_spread(old, lost, 12_000, 1000)
        wait_audited(daemon, mysql_url, len(expired))
        primary = sentinel.primary.process
        assert primary is not None
        primary.kill()
    finally:
        os.kill(replica.pid, signal.SIGCONT)
    new = sentinel.failover()
    assert new == ("127.0.0.1", sentinel.replica.port)
    assert sentinel.client().exists(*keys(lost)) == 0, "the test lost no write"

    wait_audited(daemon, mysql_url, len(expired) + len(kept))
    time.sleep(1)  # all deadlines are past: any event for a lost key would be heard by now
    assert_each_once(mysql_url, expired + kept)
    assert {statuses(mysql_url)[n] for n in lost} == {0}
    handled = {line["key"] for line in daemon.handled()}
    assert not handled & keys(lost)


@pytest.mark.mysql
def test_configure_redis_sets_the_flags_on_every_node_and_check_reports_each(
    tmp_path: Path, daemons: list[DaemonProcess], mysql_url: str
) -> None:
    setup = SentinelSetup(tmp_path / "bare", notify_flags="")
    setup.start()
    try:
        config = write_config(tmp_path / "check.toml", setup.url(), mysql_url, ORDER_ROUTES)
        orders(mysql_url, 0, 1)
        before = run_cli("check", "--config", str(config))
        assert before.returncode == 1
        assert f"FAIL: primary: Redis at 127.0.0.1:{setup.primary.port} of" in before.stdout
        assert f"FAIL: replica: Redis at 127.0.0.1:{setup.replica.port} of" in before.stdout
        assert "CONFIG SET notify-keyspace-events" in before.stdout

        start_on(tmp_path, daemons, setup.url(), mysql_url, "--configure-redis")
        for server in setup.servers:
            flags = server.client().config_get("notify-keyspace-events")
            assert set("Egx") <= set(flags["notify-keyspace-events"]), server.port

        after = run_cli("check", "--config", str(config))
        assert after.returncode == 0, after.stdout + after.stderr
        assert f"ok: primary 127.0.0.1:{setup.primary.port}" in after.stdout
        assert f"ok: replica 127.0.0.1:{setup.replica.port}" in after.stdout
    finally:
        setup.stop()

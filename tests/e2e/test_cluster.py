"""Redis Cluster: a shard per primary, followed across failovers and resharding, against
a real cluster of redis-server processes (three primaries, a replica each) and MariaDB.

"Exactly once" is read from the audit trigger (one row per changed order)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.crc import key_slot

from tests.e2e.conftest import (
    assert_each_once,
    assert_handled_once,
    cancel_spread,
    keys,
    orders,
    start_on,
    wait_audited,
    write_config,
)
from tests.support.daemon import DaemonProcess, run_cli
from tests.support.servers import RedisServer
from tests.support.shop import ORDER_ROUTES
from tests.support.topology import ClusterSetup

pytestmark = [pytest.mark.topology, pytest.mark.mysql]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ClusterSetup]:
    setup = ClusterSetup(tmp_path / "cluster")
    setup.start()
    yield setup
    setup.stop()


def start(
    tmp_path: Path, daemons: list[DaemonProcess], cluster: ClusterSetup, url: str, *args: str
) -> DaemonProcess:
    """Once it listens on every primary."""
    listeners = len(cluster.primaries())
    return start_on(tmp_path, daemons, cluster.url(), url, *args, listeners=listeners)


def served_by(cluster: ClusterSetup, node: RedisServer, numbers: list[str]) -> list[str]:
    """Those of `numbers` whose cancel key's slot `node` serves."""
    shards = node.client(0).execute_command("CLUSTER", "SHARDS")
    ranges = next(
        shard[b"slots"]
        for shard in shards
        if any(n[b"port"] == node.port and n[b"role"] == b"master" for n in shard[b"nodes"])
    )
    slots = [(ranges[i], ranges[i + 1]) for i in range(0, len(ranges), 2)]
    return [
        n
        for n in numbers
        if any(lo <= key_slot(f"order:cancel:{n}".encode()) <= hi for lo, hi in slots)
    ]


def test_every_shard_s_orders_are_cancelled_once_across_a_failover_mid_burst(
    cluster: ClusterSetup, daemons: list[DaemonProcess], tmp_path: Path, mysql_url: str
) -> None:
    first = orders(mysql_url, 0, 30_000)
    daemon = start(tmp_path, daemons, cluster, mysql_url)
    cancel_spread(cluster.client(), first, 1000, 6000)
    wait_audited(daemon, mysql_url, 10_000)

    demoted = cluster.primaries()[0]
    promoted = cluster.failover(demoted)
    daemon.wait_for_event("cluster.reshaped")
    # Keys on the promoted node's slots, due after the failover, are heard there.
    soon = served_by(cluster, promoted, orders(mysql_url, 100_000, 600, create=False))
    cancel_spread(cluster.client(), soon, 2000, 500)
    wait_audited(daemon, mysql_url, len(first) + len(soon), timeout=120)
    assert_each_once(mysql_url, first + soon)
    assert_handled_once([daemon], first + soon)
    heard = [line for line in daemon.handled() if line["key"] in keys(soon)]
    assert heard and {line["source"] for line in heard} <= {"event", "nudge"}, "recovered late"
    assert len(promoted.client(0).client_list(_type="pubsub")) >= 1
    assert daemon.events("expiry.dead") == []


def test_keys_on_slots_moved_to_a_new_primary_while_running_are_handled_once_by_two_daemons(
    cluster: ClusterSetup, daemons: list[DaemonProcess], tmp_path: Path, mysql_url: str
) -> None:
    numbers = orders(mysql_url, 0, 10_000)
    one = start(tmp_path, daemons, cluster, mysql_url)
    two = start(tmp_path, daemons, cluster, mysql_url)
    cancel_spread(cluster.client(), numbers, 3000, 9000)

    added = cluster.add_primary()
    cluster.move_slots(added, 2000)
    moved = served_by(cluster, added, numbers)
    assert moved, "no key moved"
    wait_audited(one, mysql_url, len(numbers), timeout=120)
    assert_each_once(mysql_url, numbers)
    assert_handled_once([one, two], numbers)
    for daemon in (one, two):
        reshaped = daemon.events("cluster.reshaped")
        assert [name for line in reshaped for name in line["added"]], "new primary unseen"
        # Filling the new primary, slot by slot, never changed a shard's tag.
        assert [tag for line in reshaped for tag in line["retired"]] == []
        assert daemon.events("expiry.dead") == []
    assert len(added.client(0).client_list(_type="pubsub")) >= 2


def test_two_daemons_on_one_cluster_handle_each_expiry_once(
    cluster: ClusterSetup, daemons: list[DaemonProcess], tmp_path: Path, mysql_url: str
) -> None:
    numbers = orders(mysql_url, 0, 10_000)
    one = start(tmp_path, daemons, cluster, mysql_url)
    two = start(tmp_path, daemons, cluster, mysql_url)
    cancel_spread(cluster.client(), numbers, 1000, 3000)
    wait_audited(one, mysql_url, len(numbers))
    assert_each_once(mysql_url, numbers)
    assert_handled_once([one, two], numbers)
    assert one.handled() and two.handled(), "one daemon did all the work"


def test_configure_redis_sets_the_flags_on_every_node_and_check_and_status_see_all_shards(
    tmp_path: Path, daemons: list[DaemonProcess], mysql_url: str
) -> None:
    setup = ClusterSetup(tmp_path / "bare", notify_flags="")
    setup.start()
    try:
        config = write_config(tmp_path / "check.toml", setup.url(), mysql_url, ORDER_ROUTES)
        orders(mysql_url, 0, 1)
        before = run_cli("check", "--config", str(config))
        assert before.returncode == 1
        assert before.stdout.count("FAIL: primary: Redis at 127.0.0.1:") == 3
        assert before.stdout.count("FAIL: replica: Redis at 127.0.0.1:") == 3

        daemon = start(tmp_path, daemons, setup, mysql_url, "--configure-redis")
        for node in setup.nodes:
            flags = node.client(0).config_get("notify-keyspace-events")
            assert set("Egx") <= set(flags["notify-keyspace-events"]), node.port
        after = run_cli("check", "--config", str(config))
        assert after.returncode == 0, after.stdout + after.stderr
        assert after.stdout.count("ok: primary 127.0.0.1:") == 3
        assert after.stdout.count("ok: replica 127.0.0.1:") == 3

        # Timers on every shard, and sessions no route matches: status counts the timers
        # of all shards, and only them.
        client = setup.client()
        cancel_spread(client, [f"X{n}" for n in range(300)], 60_000, 1000)
        for n in range(100):
            client.set(f"session:{n}", "x", px=60_000)
        daemon.wait_for(lambda: ledger_keys(config) == 300, 10, "300 timers recorded")
        client.set("session:late", "x", px=50)
        time.sleep(1)
        assert ledger_keys(config) == 300
        assert not [line for line in daemon.handled() if "session" in line["key"]]
    finally:
        setup.stop()


def ledger_keys(config: Path) -> int:
    status = run_cli("status", "--json", "--config", str(config))
    return int(json.loads(status.stdout)["ledger_keys"])


def test_a_primary_killed_mid_burst_is_replaced_by_its_replica_and_nothing_is_lost(
    tmp_path: Path, daemons: list[DaemonProcess], mysql_url: str
) -> None:
    """A crash, not a handover: the cluster itself fails the primary over once it has
    been silent for the node timeout, short here so that the test is quick."""
    cluster = ClusterSetup(tmp_path / "crash", node_timeout_ms=2000)
    cluster.start()
    try:
        numbers = orders(mysql_url, 0, 10_000)
        daemon = start(tmp_path, daemons, cluster, mysql_url)
        cancel_spread(cluster.client(), numbers, 1000, 8000)
        wait_audited(daemon, mysql_url, 2000)
        victim = cluster.primaries()[0]
        replica = cluster.replica_of(victim)
        assert victim.process is not None
        victim.process.kill()
        daemon.wait_for(
            lambda: replica.client(0).execute_command("ROLE")[0] == b"master", 30, "promotion"
        )
        wait_audited(daemon, mysql_url, len(numbers), timeout=120)
        assert_each_once(mysql_url, numbers)
        assert daemon.running and not daemon.events("thread.died")
        assert any(line["moved"] for line in daemon.events("cluster.reshaped"))
    finally:
        cluster.stop()

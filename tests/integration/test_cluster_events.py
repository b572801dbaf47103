"""What a cluster shard makes of a `del` during resharding, on a real cluster: a key
moved by MIGRATE has its deadline handed over to the shard that serves it now; a key
deleted while its slot migrates is forgotten, and never queued."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.crc import key_slot

from expiryd.redis.cluster import ClusterSeeds, Primary
from expiryd.redis.cluster_events import ClusterEvents
from expiryd.redis.dispatch import Dispatcher
from expiryd.redis.keyfilter import KeyFilter
from expiryd.redis.keyspace import Keyspace
from expiryd.redis.ledger import Ledger, Op, Step
from expiryd.redis.listener import Event, Kind
from expiryd.redis.markers import Markers
from tests.support.topology import ClusterSetup

pytestmark = pytest.mark.topology


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSetup]:
    setup = ClusterSetup(Path(tmp_path_factory.mktemp("cluster")))
    setup.start()
    yield setup
    setup.stop()


class Moving:
    """A low slot of one primary, being moved to another by hand, as redis-cli does."""

    def __init__(self, cluster: ClusterSetup) -> None:
        self.seeds = ClusterSeeds.from_url(cluster.url())
        self.client = self.seeds.client()
        topology = self.seeds.topology()
        self.source, self.target = topology.primaries[0], topology.primaries[1]
        self.slot = min(start for start, _ in self.source.slots)
        self.key = next(
            k
            for k in (f"order:cancel:{n}".encode() for n in range(100_000))
            if key_slot(k) == self.slot
        )
        self.ledgers = {p.address: self._ledger(p) for p in (self.source, self.target)}
        self.nodes = {
            p.address: self.seeds.node_client(p.address) for p in (self.source, self.target)
        }

    def _ledger(self, primary: Primary) -> Ledger:
        def elsewhere(key: bytes) -> Keyspace | None:
            owner = self.seeds.topology().owner(key_slot(key))
            return Keyspace.tagged("t:", owner.tag) if owner else None

        return Ledger(self.client, Keyspace.tagged("t:", primary.tag), elsewhere=elsewhere)

    def events(self) -> ClusterEvents:
        source = self.source.address
        return ClusterEvents(self.nodes[source], self.ledgers[source], self.seeds.node_client)

    def start(self) -> None:
        src, dst = self.nodes[self.source.address], self.nodes[self.target.address]
        dst.execute_command("CLUSTER", "SETSLOT", self.slot, "IMPORTING", self.source.node_id)
        src.execute_command("CLUSTER", "SETSLOT", self.slot, "MIGRATING", self.target.node_id)

    def migrate(self) -> None:
        host, port = self.target.address
        self.nodes[self.source.address].execute_command(
            "MIGRATE", host, port, "", 0, 5000, "KEYS", self.key
        )

    def finish(self, back: bool = False) -> None:
        owner = self.source if back else self.target
        for node in self.nodes.values():
            node.execute_command("CLUSTER", "SETSLOT", self.slot, "NODE", owner.node_id)

    def deadline_in(self, primary: Primary) -> float | None:
        return self.client.zscore(self.ledgers[primary.address].keyspace.deadlines, self.key)


def test_a_key_moved_by_migrate_has_its_deadline_handed_over(cluster: ClusterSetup) -> None:
    moving = Moving(cluster)
    moving.client.set(moving.key, "1", px=60_000)
    assert moving.ledgers[moving.source.address].record([moving.key]) == 1
    moving.start()
    moving.migrate()  # the source publishes `del` for it
    try:
        assert moving.events().vet([Step(Op.FORGET, moving.key)]) == []
        moving.finish()
        time.sleep(0.3)  # past the topology the hand-over may have read
        ledger = moving.ledgers[moving.source.address]
        ledger.hand_over_keys([moving.key])
        assert moving.deadline_in(moving.target) is not None
        assert moving.deadline_in(moving.source) is None
    finally:
        moving.finish()
        moving.client.delete(moving.key)


def test_a_key_deleted_while_its_slot_migrates_is_forgotten(cluster: ClusterSetup) -> None:
    moving = Moving(cluster)
    moving.client.set(moving.key, "1", px=60_000)
    source = moving.ledgers[moving.source.address]
    assert source.record([moving.key]) == 1
    moving.start()
    try:
        moving.nodes[moving.source.address].delete(moving.key)  # a producer's DEL
        forget = [Step(Op.FORGET, moving.key)]
        assert moving.events().vet(forget) == forget
        source.apply(forget)
        assert moving.deadline_in(moving.source) is None
        assert moving.deadline_in(moving.target) is None
    finally:
        moving.finish(back=True)


def test_a_node_that_cannot_say_keeps_the_window_for_later(cluster: ClusterSetup) -> None:
    moving = Moving(cluster)
    events = ClusterEvents(
        redis.Redis(host="127.0.0.1", port=1),
        moving.ledgers[moving.source.address],
        moving.seeds.node_client,
    )
    with pytest.raises(redis.ConnectionError):
        events.vet([Step(Op.FORGET, moving.key)])


def test_a_ttl_set_on_the_node_importing_its_slot_is_recorded_once_the_slot_is_its_own(
    cluster: ClusterSetup,
) -> None:
    moving = Moving(cluster)
    moving.start()
    target = moving.nodes[moving.target.address]
    try:
        # A producer's SETEX sent to the importing node by ASK: that node publishes it.
        with target.pipeline(transaction=False) as pipe:
            pipe.execute_command("ASKING")
            pipe.set(moving.key, "1", px=60_000)
            pipe.execute()
        ledger = moving.ledgers[moving.target.address]
        events = ClusterEvents(target, ledger, moving.seeds.node_client)
        dispatcher = Dispatcher(
            ledger=ledger,
            markers=Markers(),
            keys=KeyFilter(b"t:", 512),
            report_unqueued=lambda key, reason: None,
            wake_workers=lambda: None,
            vet=events.vet,
            importing=events.importing,
        )
        assert dispatcher.hear(Event(Kind.EXPIRE, moving.key), 1)
        dispatcher.work(burst=True)
        assert moving.deadline_in(moving.target) is None  # its script cannot read it yet
        on_source = moving.nodes[moving.source.address]
        source = ClusterEvents(on_source, ledger, moving.seeds.node_client)
        assert source.importing([moving.key]) == [], "the source does not hold it"

        dispatcher.work(burst=True)
        assert moving.deadline_in(moving.target) is None, "recorded again while importing"
        moving.finish()
        time.sleep(1.2)  # past two tries
        dispatcher.work(burst=True)
        assert moving.deadline_in(moving.target) is not None
    finally:
        moving.finish()
        moving.client.delete(moving.key)
        moving.client.close()

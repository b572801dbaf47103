"""What a cluster shard makes of its events during resharding, on a real cluster: a key
moved by MIGRATE has its deadline handed over at once to the shard of the node it lives
on (parked while that node has none); a key deleted while its slot migrates is
forgotten, and never queued; a TTL set on the node importing its slot is recorded once
the slot is that node's."""

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
from expiryd.redis.nodes import Address
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
        self.shards: dict[Address, Keyspace] = {
            p.address: Keyspace.tagged("t:", p.tag) for p in (self.source, self.target)
        }
        """The primaries with a shard (a test may take one out: a node with no slots)."""

    def _ledger(self, primary: Primary) -> Ledger:
        def elsewhere(key: bytes) -> Keyspace | None:
            owner = self.seeds.topology().owner(key_slot(key))
            return Keyspace.tagged("t:", owner.tag) if owner else None

        return Ledger(self.client, Keyspace.tagged("t:", primary.tag), elsewhere=elsewhere)

    def events(self, on: Primary | None = None) -> ClusterEvents:
        address = (on or self.source).address
        return ClusterEvents(
            self.nodes[address], self.ledgers[address], self.seeds.node_client, self.shards.get
        )

    def start(self) -> None:
        src, dst = self.nodes[self.source.address], self.nodes[self.target.address]
        dst.execute_command("CLUSTER", "SETSLOT", self.slot, "IMPORTING", self.source.node_id)
        src.execute_command("CLUSTER", "SETSLOT", self.slot, "MIGRATING", self.target.node_id)

    def migrate(self) -> None:
        host, port = self.target.address
        self.nodes[self.source.address].execute_command(
            "MIGRATE", host, port, "", 0, 5000, "KEYS", self.key
        )

    def asking(self, *command: str | bytes | int) -> None:
        """A producer's command sent to the importing node by ASK."""
        with self.nodes[self.target.address].pipeline(transaction=False) as pipe:
            pipe.execute_command("ASKING")
            pipe.execute_command(*command)
            pipe.execute()

    def finish(self, back: bool = False) -> None:
        owner = self.source if back else self.target
        for node in self.nodes.values():
            node.execute_command("CLUSTER", "SETSLOT", self.slot, "NODE", owner.node_id)

    def deadline_in(self, primary: Primary) -> float | None:
        return self.client.zscore(self.ledgers[primary.address].keyspace.deadlines, self.key)

    def close(self) -> None:
        self.client.delete(self.key)
        self.client.close()
        for node in self.nodes.values():
            node.close()


@pytest.fixture
def moving(cluster: ClusterSetup) -> Iterator[Moving]:
    moving = Moving(cluster)
    yield moving
    moving.finish()
    moving.close()


def test_a_key_moved_by_migrate_has_its_deadline_handed_over_at_once(moving: Moving) -> None:
    moving.client.set(moving.key, "1", px=60_000)
    assert moving.ledgers[moving.source.address].record([moving.key]) == 1
    moving.start()
    moving.migrate()  # the source publishes `del` for it
    assert moving.events().vet([Step(Op.FORGET, moving.key)]) == []
    # Before the slot is the target's: its shard hears the key's events from now on.
    assert moving.deadline_in(moving.target) is not None
    assert moving.deadline_in(moving.source) is None
    moving.finish()
    # The order is paid: the DEL heard on the target takes the deadline out for good.
    moving.client.delete(moving.key)
    moving.ledgers[moving.target.address].apply([Step(Op.FORGET, moving.key)])
    assert moving.deadline_in(moving.target) is None
    assert moving.deadline_in(moving.source) is None


def test_a_key_moved_to_a_node_with_no_shard_yet_is_parked_until_it_has_one(
    moving: Moving,
) -> None:
    moving.client.set(moving.key, "1", px=60_000)
    moving.ledgers[moving.source.address].record([moving.key])
    target = moving.shards.pop(moving.target.address)  # importing its first slot
    moving.start()
    moving.migrate()
    events = moving.events()
    assert events.vet([Step(Op.FORGET, moving.key)]) == []
    assert moving.deadline_in(moving.source) is not None, "kept while parked"
    moving.shards[moving.target.address] = target
    time.sleep(1.1)
    events.tend()
    assert moving.deadline_in(moving.target) is not None
    assert moving.deadline_in(moving.source) is None


def test_a_parked_key_deleted_before_its_node_has_a_shard_is_forgotten(moving: Moving) -> None:
    moving.client.set(moving.key, "1", px=60_000)
    moving.ledgers[moving.source.address].record([moving.key])
    target = moving.shards.pop(moving.target.address)
    moving.start()
    moving.migrate()
    events = moving.events()
    assert events.vet([Step(Op.FORGET, moving.key)]) == []
    moving.asking("DEL", moving.key)  # unheard: the target has no listener yet
    moving.shards[moving.target.address] = target
    time.sleep(1.1)
    events.tend()
    assert moving.deadline_in(moving.target) is None
    assert moving.deadline_in(moving.source) is None


def test_a_key_deleted_while_its_slot_migrates_is_forgotten(moving: Moving) -> None:
    moving.client.set(moving.key, "1", px=60_000)
    source = moving.ledgers[moving.source.address]
    assert source.record([moving.key]) == 1
    moving.start()
    moving.nodes[moving.source.address].delete(moving.key)  # a producer's DEL
    forget = [Step(Op.FORGET, moving.key)]
    assert moving.events().vet(forget) == forget
    source.apply(forget)
    assert moving.deadline_in(moving.source) is None
    assert moving.deadline_in(moving.target) is None


def test_a_del_sent_to_the_importing_node_is_a_del_and_holds_nothing_up(moving: Moving) -> None:
    """The importing node answers MOVED to the source, which answers ASK back: the key
    lives on neither."""
    moving.client.set(moving.key, "1", px=60_000)
    moving.start()
    moving.migrate()
    moving.ledgers[moving.target.address].apply([Step(Op.RECORD, moving.key)])
    moving.asking("DEL", moving.key)
    forget = [Step(Op.FORGET, moving.key)]
    assert moving.events(on=moving.target).vet(forget) == forget


def test_a_hand_over_drops_a_deadline_to_come_whose_key_exists_nowhere(moving: Moving) -> None:
    """Its `del` was heard where the entry was not: the new shard would take it for an
    expiry that nobody heard."""
    source = moving.ledgers[moving.source.address]
    moving.client.set(moving.key, "1", px=60_000)
    source.record([moving.key])
    moving.client.delete(moving.key)
    other = moving.shards[moving.target.address]
    assert source.hand_over(lambda key: other) == 1
    assert moving.deadline_in(moving.source) is None
    assert moving.deadline_in(moving.target) is None


def test_a_node_that_cannot_say_keeps_the_window_for_later(moving: Moving) -> None:
    events = ClusterEvents(
        redis.Redis(host="127.0.0.1", port=1),
        moving.ledgers[moving.source.address],
        moving.seeds.node_client,
        moving.shards.get,
    )
    with pytest.raises(redis.ConnectionError):
        events.vet([Step(Op.FORGET, moving.key)])


def test_a_ttl_set_on_the_node_importing_its_slot_is_recorded_once_the_slot_is_its_own(
    moving: Moving,
) -> None:
    moving.start()
    moving.asking("SET", moving.key, "1", "PX", 60_000)  # the importing node publishes it
    ledger = moving.ledgers[moving.target.address]
    dispatcher = Dispatcher(
        ledger=ledger,
        markers=Markers(),
        keys=KeyFilter(b"t:", 512),
        report_unqueued=lambda key, reason: None,
        wake_workers=lambda: None,
        cluster=moving.events(on=moving.target),
    )
    assert dispatcher.hear(Event(Kind.EXPIRE, moving.key), 1)
    dispatcher.work(burst=True)
    assert moving.deadline_in(moving.target) is None  # its script cannot read it yet
    assert moving.events().importing([moving.key]) == [], "the source does not hold it"

    time.sleep(0.6)
    dispatcher.work(burst=True)  # tried again: still importing
    assert moving.deadline_in(moving.target) is None
    moving.finish()
    time.sleep(0.6)
    dispatcher.work(burst=True)
    assert moving.deadline_in(moving.target) is not None

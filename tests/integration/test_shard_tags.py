"""Two daemons that read a cluster's topology a moment apart agree on each primary's
shard tag, on a real cluster: the first to write a choice wins."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from expiryd.redis.cluster import ClusterSeeds, Topology, tag_for_slot
from expiryd.redis.keyspace import Keyspace
from expiryd.redis.shard_tags import ShardTags
from tests.support.topology import ClusterSetup

pytestmark = pytest.mark.topology


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSetup]:
    setup = ClusterSetup(Path(tmp_path_factory.mktemp("cluster")))
    setup.start()
    yield setup
    setup.stop()


def filling(topology: Topology, slots: int) -> Topology:
    """`topology` as it looks while a new primary has taken the first `slots` slots of
    the first primary."""
    first, *rest = topology.primaries
    low, high = first.slots[0]
    new = replace(first, node_id="new" + "0" * 37, address=("127.0.0.1", 1), tag="")
    new = replace(new, slots=((low, low + slots - 1),), tag=tag_for_slot(low + slots - 1))
    old = replace(first, slots=((low + slots, high),))
    return Topology((old, new, *rest))


def views(*topologies: Topology) -> Callable[[], Topology]:
    """Reads that give these topologies in turn, then the last one again."""
    given = list(topologies)
    return lambda: given.pop(0) if len(given) > 1 else given[0]


@pytest.mark.parametrize("first", ["early", "late"])
def test_daemons_reading_a_new_primary_a_moment_apart_agree_on_its_tag(
    cluster: ClusterSetup, first: str
) -> None:
    seeds = ClusterSeeds.from_url(cluster.url())
    keyspace = Keyspace(f"{first}:", 0)
    one, two = ShardTags(seeds.client(), keyspace), ShardTags(seeds.client(), keyspace)
    topology = seeds.topology()
    early, late = filling(topology, 1), filling(topology, 20)

    if first == "early":
        # The one that read the older topology wrote first: the other keeps its choice.
        chosen = one.assign(views(early)).primaries[1].tag
        assert chosen == tag_for_slot(early.primaries[1].top_slot)
        assert two.assign(views(late)).primaries[1].tag == chosen
    else:
        # The newer choice was written first: the other, whose topology is older, reads
        # it again (as new as the choice it found, at least) before replacing the tag.
        chosen = one.assign(views(late)).primaries[1].tag
        assert chosen == tag_for_slot(late.primaries[1].top_slot)
        assert two.assign(views(early, late)).primaries[1].tag == chosen
    # And so it stays while slots keep moving onto it.
    assert one.assign(views(filling(topology, 40))).primaries[1].tag == chosen
    assert two.read(filling(topology, 60)).primaries[1].tag == chosen
    tags = [p.tag for p in one.assign(views(topology)).primaries]
    assert tags == [p.tag for p in topology.primaries]

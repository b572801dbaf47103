"""A Redis Cluster: its seed nodes, its primaries, and where each shard keeps its state.

A `redis+cluster://` URL names seed nodes; `ClusterSeeds` is what it says. `Topology` is
the cluster as `CLUSTER SHARDS` describes it at one moment: its primaries, their slots
and replicas.

Each primary is a shard (see `shard`): expiryd keeps that shard's ledger and queue under
a hash tag whose slot the primary owns, so that one script can read a watched key and
write its deadline and its job on the same node. A primary keeps its tag for as long as
it owns the tag's slot (see `choose_tags`, and `shard_tags` for how daemons agree on it).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cache
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode
from redis.crc import key_slot
from redis.retry import Retry

from expiryd.redis.nodes import Address, NodesUrl, NodeUrlError

SCHEMES = {"redis+cluster": False, "rediss+cluster": True}
"""URL scheme -> whether the nodes are reached over TLS."""

SLOTS = 16384
DEFAULT_PORT = 6379


@dataclass(frozen=True)
class ClusterSeeds:
    seeds: tuple[Address, ...]
    node_options: dict[str, Any] = field(repr=False, compare=False)
    """How to reach any node (credentials, TLS), from the URL."""

    @classmethod
    def from_url(cls, url: str) -> ClusterSeeds:
        parts = NodesUrl.split(url, SCHEMES, DEFAULT_PORT, "node")
        if parts.path.strip("/") not in ("", "0"):
            raise NodeUrlError("a cluster has only DB 0: leave the path out")
        return cls(parts.addresses, parts.node_options(0))

    def client(self, **settings: Any) -> redis.RedisCluster:
        """A client of the whole cluster: each command goes to the node of its key."""
        options = {k: v for k, v in (settings | self.node_options).items() if k != "db"}
        return redis.RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in self.seeds], **options
        )

    def node_client(self, address: Address, **settings: Any) -> redis.Redis:
        host, port = address
        return redis.Redis(host=host, port=port, **(settings | self.node_options))

    def topology(self, also: tuple[Address, ...] = ()) -> Topology:
        """The cluster as the first seed, or else node of `also`, that answers describes
        it; quick to give up on a node that does not."""
        errors = []
        for address in dict.fromkeys((*self.seeds, *also)):
            client = self.node_client(
                address, socket_connect_timeout=1, socket_timeout=2, retry=Retry(NoBackoff(), 0)
            )
            try:
                return Topology.parse(client.execute_command("CLUSTER", "SHARDS"))
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                errors.append(f"{address[0]}:{address[1]}: {exc}")
            finally:
                client.close()
        raise redis.ConnectionError("no cluster node answers: " + "; ".join(errors))


@dataclass(frozen=True)
class Primary:
    node_id: str
    address: Address
    slots: tuple[tuple[int, int], ...]
    """Inclusive ranges."""
    replicas: tuple[Address, ...]
    tag: str = ""
    """The hash tag of this primary's shard state (see `choose_tags`); until one is
    chosen, that of its highest slot."""

    def __post_init__(self) -> None:
        if not self.tag:
            object.__setattr__(self, "tag", tag_for_slot(self.top_slot))

    @property
    def top_slot(self) -> int:
        return max(end for _, end in self.slots)

    def owns(self, slot: int) -> bool:
        return any(start <= slot <= end for start, end in self.slots)


@dataclass(frozen=True)
class Topology:
    primaries: tuple[Primary, ...]

    @classmethod
    def parse(cls, shards: list[dict[bytes, Any]]) -> Topology:
        primaries = []
        for shard in shards:
            ranges = shard[b"slots"]
            slots = tuple((int(ranges[i]), int(ranges[i + 1])) for i in range(0, len(ranges), 2))
            nodes = shard[b"nodes"]
            main = [n for n in nodes if n[b"role"] == b"master" and n[b"health"] == b"online"]
            if not slots or not main:
                continue  # a primary without slots watches nothing; a failed one, nobody
            replicas = tuple(_address(n) for n in nodes if n[b"role"] != b"master")
            primaries.append(Primary(main[0][b"id"].decode(), _address(main[0]), slots, replicas))
        return cls(tuple(sorted(primaries, key=lambda p: p.top_slot)))

    def owner(self, slot: int) -> Primary | None:
        return next((p for p in self.primaries if p.owns(slot)), None)

    @property
    def nodes(self) -> tuple[Address, ...]:
        return tuple(a for p in self.primaries for a in (p.address, *p.replicas))

    def tagged(self, tags: dict[str, str]) -> Topology:
        """This topology with each primary's tag taken from `tags` (node id -> tag)."""
        return Topology(tuple(replace(p, tag=tags.get(p.node_id, p.tag)) for p in self.primaries))


def choose_tags(topology: Topology, kept: dict[str, str]) -> dict[str, str]:
    """The tag of each primary's shard (node id -> tag), given those kept so far.

    A primary keeps its tag while it owns the tag's slot. While resharding fills a new
    primary slot by slot, its highest slot changes with every move: daemons reading the
    topology a moment apart would keep one shard's state under two tags, and claim one
    expiry under each. A primary with no tag it still owns takes a kept tag whose slot
    it owns now (a failover promoted it, or the slot moved to it: the state moved with
    it), else the one of its highest slot. Resharding tools (`redis-cli --cluster
    reshard`) move a node's lowest slots first, so that slot stays put the longest."""
    chosen = {}
    for primary in topology.primaries:
        tag = kept.get(primary.node_id, "")
        if not tag or not primary.owns(slot_of_tag(tag)):
            inherited = [t for t in set(kept.values()) if primary.owns(slot_of_tag(t))]
            tag = max(inherited, key=slot_of_tag, default=tag_for_slot(primary.top_slot))
        chosen[primary.node_id] = tag
    return chosen


def _address(node: dict[bytes, Any]) -> Address:
    host = node.get(b"ip") or node.get(b"endpoint") or b"127.0.0.1"
    port = node.get(b"tls-port") or node.get(b"port") or 0
    return host.decode() if isinstance(host, bytes) else str(host), int(port)


@cache
def tag_for_slot(slot: int) -> str:
    """A short hash tag whose keys hash to `slot`, the same one each time."""
    n = 0
    while key_slot(f"{{{slot}.{n}}}".encode()) != slot:
        n += 1
    return f"{slot}.{n}"


@dataclass(frozen=True)
class Reshape:
    """How a daemon's shards must change to match a cluster's topology."""

    start: tuple[Primary, ...] = ()
    """Primaries with no shard yet: added, or whose tag changed."""
    move: tuple[Primary, ...] = ()
    """Shards whose tag is now another node's: the replica promoted by a failover."""
    retire: tuple[str, ...] = ()
    """Tags no primary keeps its shard under any more."""

    def __bool__(self) -> bool:
        return bool(self.start or self.move or self.retire)


def reshape(shards: dict[str, Address], topology: Topology) -> Reshape:
    """What changes `shards` (tag -> the node its listener is on) to one per primary. A
    shard whose tag's slot no primary serves (its primary failed, and no replica is
    promoted yet) is left as it is: its listener reconnects until the slot is served."""
    wanted = {primary.tag: primary for primary in topology.primaries}
    return Reshape(
        start=tuple(p for tag, p in wanted.items() if tag not in shards),
        move=tuple(p for tag, p in wanted.items() if tag in shards and shards[tag] != p.address),
        retire=tuple(
            tag
            for tag in shards
            if tag not in wanted and topology.owner(slot_of_tag(tag)) is not None
        ),
    )


def slot_of_tag(tag: str) -> int:
    return key_slot(f"{{{tag}}}".encode())

"""Where every daemon on a cluster agrees which hash tag each primary's shard keeps its
state under (the choice is `cluster.choose_tags`): a hash in the cluster, node id -> tag.

Two daemons may choose at once, from topologies read a moment apart. Each writes its
choice only if the tag it read is still there; the first one wins, and the other takes
the tag it finds. A daemon about to replace a primary's tag first reads the topology
again: another daemon may have chosen that tag from a topology newer than its own, and
a read after that choice is at least as new.
"""

from __future__ import annotations

from collections.abc import Callable

import redis

from expiryd.redis import lua
from expiryd.redis.cluster import Topology, choose_tags
from expiryd.redis.connections import CONNECTION_ERRORS
from expiryd.redis.keyspace import Keyspace


class ShardTags:
    def __init__(self, client: redis.Redis, keyspace: Keyspace) -> None:
        self.client = client
        self.key = keyspace.shard_nodes
        self._claim = lua.register(client, "tag_claim")
        self._agreed: dict[str, str] | None = None

    def kept(self) -> dict[str, str]:
        found: dict[bytes, bytes] = self.client.hgetall(self.key)  # type: ignore[assignment]
        return {node.decode(): tag.decode() for node, tag in found.items()}

    def assign(self, read: Callable[[], Topology]) -> Topology:
        """The topology `read` gives, with the tag every daemon uses for each primary."""
        topology = read()
        try:
            kept = self.kept()
        except (redis.RedisError, *CONNECTION_ERRORS):
            if self._agreed is None:
                raise
            # The primary of this hash is failing over: the tags agreed last, meanwhile.
            return topology.tagged(choose_tags(topology, self._agreed))
        chosen = choose_tags(topology, kept)
        if any(kept.get(node, tag) != tag for node, tag in chosen.items()):
            topology = read()
            chosen = choose_tags(topology, kept)
        for node, tag in chosen.items():
            was = kept.get(node, "")
            if tag != was:
                now = self._claim(keys=[self.key], args=[node, was, tag])
                chosen[node] = now.decode() if isinstance(now, bytes) else str(now)
        self._agreed = kept | chosen
        return topology.tagged(chosen)

    def read(self, topology: Topology) -> Topology:
        """`topology` with the tags a daemon would use, writing none (for the CLI)."""
        return topology.tagged(choose_tags(topology, self.kept()))

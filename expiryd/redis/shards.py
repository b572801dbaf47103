"""A daemon's shards (see `shard`): one for a Redis or a Sentinel group's primary; one per
primary of a cluster, reshaped as the cluster changes.

The cluster watch hands every topology it reads to `follow`:
- a primary with no shard (added, or given slots) gets one, which scans its keys;
- a shard whose tag's slot is now another node's (a failover promoted its replica) is
  rebuilt on that node: its listener leaves the old one, which hears only a replica's
  copies from then on, and the new listener rescans the same ledger;
- a shard whose tag no primary keeps any more (its slot moved away) stops listening; its
  queue is drained by the workers until empty, and its primary starts a new shard.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis

from expiryd.component import Component
from expiryd.logs import get_logger
from expiryd.redis.cluster import Primary, Topology, reshape
from expiryd.redis.connections import CONNECTION_ERRORS, RedisTarget
from expiryd.redis.keyspace import Keyspace
from expiryd.redis.queue import JobQueue
from expiryd.redis.shard import Shard, Wiring

LEAVE_SECONDS = 5.0
"""How long a shard that leaves may take to apply what it heard."""


class Shards:
    def __init__(
        self,
        *,
        target: RedisTarget,
        client: redis.Redis,
        prefix: str,
        wiring: Wiring,
        listen: bool,
    ) -> None:
        self.target = target
        self.client = client
        self.prefix = prefix
        self.wiring = wiring
        self.listen = listen
        self.start: Callable[[Component], None] = lambda component: component.start()
        """Starts a component of a shard added while running (the launcher's `start`)."""
        self.all = self._build()
        self._draining: list[Shard] = []
        self._log = get_logger()

    def _build(self) -> list[Shard]:
        if self.target.cluster is None:
            keyspace = Keyspace(self.prefix, self.target.db)
            return [self._shard(self.target, keyspace)]
        return [self._on(primary) for primary in self.target.cluster.topology().primaries]

    def _shard(self, target: RedisTarget, keyspace: Keyspace, **node: object) -> Shard:
        return Shard(
            target=target,
            client=self.client,
            keyspace=keyspace,
            wiring=self.wiring,
            listen=self.listen,
            **node,  # type: ignore[arg-type]
        )

    def _on(self, primary: Primary) -> Shard:
        """The shard of a cluster's primary."""
        return self._shard(
            self.target.node_target(primary.address),
            Keyspace.tagged(self.prefix, primary.tag),
            node=primary.address,
            scanned=self.target.node_client(primary.address),
        )

    def components(self) -> list[Component]:
        return [c for shard in self.all for c in shard.components()]

    def queues(self) -> list[JobQueue]:
        return [shard.queue for shard in (*self.all, *self._draining)]

    def ready(self) -> bool:
        return all(shard.ready() for shard in self.all)

    def subscribed(self) -> bool:
        return all(shard.subscribed() for shard in self.all)

    @property
    def unapplied(self) -> int:
        return sum(shard.unapplied for shard in self.all)

    def stop(self, deadline: float) -> None:
        for shard in self.all:
            shard.stop(deadline)

    def follow(self, topology: Topology) -> None:
        """Reshape the shards to match `topology` (see the module's docstring)."""
        self._drop_drained()
        plan = reshape({s.tag: s.node for s in self.all if s.node}, topology)
        if not plan:
            return
        leaving = {*plan.retire, *(p.tag for p in plan.move)}
        gone = [s for s in self.all if s.tag in leaving]
        deadline = time.monotonic() + LEAVE_SECONDS
        # The old listeners leave first, so that no two listen for one shard at once.
        for shard in gone:
            shard.stop(deadline)
        arriving = [self._on(p) for p in (*plan.move, *plan.start)]
        self.all = [*(s for s in self.all if s not in gone), *arriving]
        self._draining += [s for s in gone if s.tag in plan.retire]
        for shard in arriving:
            for component in shard.components():
                self.start(component)
        self._log.warning(
            "cluster.reshaped",
            moved=[_named(p) for p in plan.move],
            added=[_named(p) for p in plan.start],
            retired=list(plan.retire),
        )

    def _drop_drained(self) -> None:
        for shard in list(self._draining):
            try:
                counts = shard.queue.counts()
            except (redis.RedisError, *CONNECTION_ERRORS):
                continue
            if counts["ready"] == counts["leased"] == 0:
                self._draining.remove(shard)


def _named(primary: Primary) -> str:
    return f"{primary.tag}@{primary.address[0]}:{primary.address[1]}"


def shard_keyspaces(target: RedisTarget, prefix: str) -> list[Keyspace]:
    """Where each shard keeps its state: one keyspace, or in a cluster one per primary."""
    if target.cluster is None:
        return [Keyspace(prefix, target.db)]
    return [Keyspace.tagged(prefix, p.tag) for p in target.cluster.topology().primaries]

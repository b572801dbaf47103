"""A daemon's shards (see `shard`): one for a Redis or a Sentinel group's primary; one per
primary of a cluster, reshaped as the cluster changes.

The cluster watch hands every topology it reads to `follow`:
- a primary with no shard (added, or given slots) gets one, which scans its keys;
- a shard whose tag's slot is now another node's (a failover promoted its replica, or
  the slot moved to a primary that had no tag) is rebuilt on that node: its listener
  leaves the old one, and the new listener rescans the same ledger, handing over the
  entries of keys it does not serve;
- a shard whose tag no primary keeps any more (its slot moved to a primary with a tag of
  its own) stops listening and hands its ledger over to the shards of its keys'
  primaries; its queue is drained by the workers until empty, and its primary, if it
  still has slots, starts a new shard.

Every tag with state under it is in a set in the cluster (`Keyspace.shard_tags`) until
its queue is empty, so that a daemon started later drains what an earlier one left
under a tag that is no longer any primary's.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis
from redis.crc import key_slot

from expiryd.component import Component
from expiryd.logs import describe_error, get_logger
from expiryd.redis.cluster import Primary, Topology, reshape, slot_of_tag
from expiryd.redis.connections import CONNECTION_ERRORS, RedisTarget
from expiryd.redis.keyspace import Keyspace
from expiryd.redis.ledger import Ledger
from expiryd.redis.nodes import Address
from expiryd.redis.queue import JobQueue
from expiryd.redis.shard import Shard, Wiring
from expiryd.redis.shard_tags import ShardTags

LEAVE_SECONDS = 5.0
"""How long a shard that leaves may take to apply what it heard."""
TOPOLOGY_SECONDS = 0.2


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
        self._log = get_logger()
        self._draining: list[JobQueue] = []
        self._registry = Keyspace(prefix, target.db).shard_tags
        self._tags = ShardTags(client, Keyspace(prefix, target.db))
        self._topology: tuple[float, Topology] | None = None
        self._registered: set[str] = set()
        if target.cluster is None:
            self.all = [self._shard(target, Keyspace(prefix, target.db))]
        else:
            wiring.elsewhere = self.keyspace_of
            wiring.shard_at = self.keyspace_at
            wiring.connect = target.node_client
            topology = self.topology()
            self.all = [self._on(primary) for primary in topology.primaries]
            try:
                self._adopt_orphans(topology)
            except (redis.RedisError, *CONNECTION_ERRORS) as exc:  # tried again each second
                self._log.warning("cluster.handover_failed", error=describe_error(exc))

    def _adopt_orphans(self, topology: Topology) -> None:
        """Tags with state under them that no primary's shard has now: left by an earlier
        daemon, by another that saw an older topology, or handed deadlines under a tag
        another daemon chose differently at the same moment (see `keyspace_of`)."""
        current = {shard.tag for shard in self.all}
        if current:
            self.client.sadd(self._registry, *current)
        known = {t.decode() for t in self.client.smembers(self._registry)}  # type: ignore[union-attr]
        wanted = {primary.tag for primary in topology.primaries}
        for tag in known - current - wanted - {q.keyspace.tag for q in self._draining}:
            if topology.owner(slot_of_tag(tag)) is None:
                continue  # its slot is served by nobody now: wait until it is
            try:
                self._retire(Keyspace.tagged(self.prefix, tag), topology)
            except (redis.RedisError, *CONNECTION_ERRORS) as exc:
                self._log.warning("cluster.handover_failed", tag=tag, error=describe_error(exc))

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

    def topology(self, also: tuple[Address, ...] = ()) -> Topology:
        """The cluster now, each primary with the tag every daemon uses for it."""
        assert self.target.cluster is not None
        cluster = self.target.cluster
        return self._tags.assign(lambda: cluster.topology(also=also))

    def keyspace_of(self, key: bytes) -> Keyspace | None:
        """The keyspace of the shard of the primary serving `key` now, from a topology
        at most `TOPOLOGY_SECONDS` old: asked when resharding moved a key."""
        return self._keyspace(self._recent().owner(key_slot(key)))

    def keyspace_at(self, address: Address) -> Keyspace | None:
        """The keyspace of the shard of the primary at `address` (one importing a slot
        that a key moved to), if it is a primary with slots."""
        primaries = self._recent().primaries
        return self._keyspace(next((p for p in primaries if p.address == address), None))

    def _recent(self) -> Topology:
        now = time.monotonic()
        if self._topology is None or now - self._topology[0] > TOPOLOGY_SECONDS:
            known = self._topology[1].nodes if self._topology else ()
            self._topology = (now, self.topology(also=known))
        return self._topology[1]

    def _keyspace(self, owner: Primary | None) -> Keyspace | None:
        if owner is None:
            return None
        if owner.tag not in self._registered:
            # Before its deadlines go there: a tag no shard has yet is found as an orphan.
            self.client.sadd(self._registry, owner.tag)
            self._registered.add(owner.tag)
        return Keyspace.tagged(self.prefix, owner.tag)

    def components(self) -> list[Component]:
        return [c for shard in self.all for c in shard.components()]

    def keyspaces(self) -> list[Keyspace]:
        return [queue.keyspace for queue in self.queues()]

    def queues(self) -> list[JobQueue]:
        return [*(shard.queue for shard in self.all), *self._draining]

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
        self._tidy(topology)
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
        for shard in arriving:
            for component in shard.components():
                self.start(component)
        self._log.warning(
            "cluster.reshaped",
            moved=[_named(p) for p in plan.move],
            added=[_named(p) for p in plan.start],
            retired=list(plan.retire),
        )
        # Last, since Redis may fail them: a retired tag stays in the registry, and is
        # handed over when `_tidy` finds it again.
        if arriving:
            self.client.sadd(self._registry, *(s.tag for s in arriving))
        for shard in gone:
            if shard.tag in plan.retire:
                self._retire(shard.keyspace, topology)

    def _retire(self, keyspace: Keyspace, topology: Topology) -> None:
        """Hand the ledger under a tag no primary keeps over to the shards of its keys,
        and drain its queue."""

        moved = Ledger(self.client, keyspace).hand_over(self._keyspace_in(topology))
        self._draining.append(JobQueue(self.client, keyspace))
        self._log.info("cluster.shard_retired", tag=keyspace.tag, deadlines_moved=moved)

    def _keyspace_in(self, topology: Topology) -> Callable[[bytes], Keyspace | None]:
        def shard_of(key: bytes) -> Keyspace | None:
            owner = topology.owner(key_slot(key))
            return Keyspace.tagged(self.prefix, owner.tag) if owner else None

        return shard_of

    def _tidy(self, topology: Topology) -> None:
        """Hand over again what reached a retired tag's ledger since (a daemon that had
        not seen the change yet), and forget the tag once nothing is left in its ledger
        or queue, dead letters included; then look for orphans."""
        wanted = {primary.tag for primary in topology.primaries}
        for queue in list(self._draining):
            if queue.keyspace.tag in wanted:  # a primary's tag again: live
                self._draining.remove(queue)
                continue
            try:
                ledger = Ledger(self.client, queue.keyspace)
                if ledger.hand_over(self._keyspace_in(topology)) or ledger.size():
                    continue
                if any(queue.counts().values()):
                    continue
                self.client.srem(self._registry, queue.keyspace.tag)
            except (redis.RedisError, *CONNECTION_ERRORS):
                continue
            self._draining.remove(queue)
        try:
            self._adopt_orphans(topology)
        except (redis.RedisError, *CONNECTION_ERRORS):
            pass


def _named(primary: Primary) -> str:
    return f"{primary.tag}@{primary.address[0]}:{primary.address[1]}"


def shard_keyspaces(target: RedisTarget, client: redis.Redis, prefix: str) -> list[Keyspace]:
    """Where shards keep their state: one keyspace; in a cluster, one per primary and one
    per tag still draining."""
    base = Keyspace(prefix, target.db)
    if target.cluster is None:
        return [base]
    topology = ShardTags(client, base).read(target.cluster.topology())
    tags = {p.tag for p in topology.primaries}
    tags |= {t.decode() for t in client.smembers(base.shard_tags)}  # type: ignore[union-attr]
    return [Keyspace.tagged(prefix, tag) for tag in sorted(tags)]

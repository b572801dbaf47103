"""A shard: what watches the keys of one Redis node, and queues their expiries there.

Keyspace events are published only by the node whose key it is, and expiryd's scripts
read a watched key in the same step as they write its ledger entry and its job. So each
node whose keys expiryd watches gets its own listener, dispatcher, sweeper, ledger and
job queue, all on that node: a single Redis, or a Sentinel group's primary, is one shard;
a Cluster has one per primary (see `cluster`). Workers take jobs from every shard's
queue.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import redis

from expiryd.component import Component
from expiryd.config import RedisSettings
from expiryd.liveness import Loops
from expiryd.redis.cluster_events import ClusterEvents
from expiryd.redis.connections import RedisTarget
from expiryd.redis.dispatch import Dispatcher
from expiryd.redis.keyfilter import KeyFilter
from expiryd.redis.keyspace import Keyspace
from expiryd.redis.ledger import Ledger
from expiryd.redis.listener import Listener
from expiryd.redis.markers import Markers
from expiryd.redis.nodes import Address
from expiryd.redis.queue import JobQueue
from expiryd.redis.sweeper import Sweeper


@dataclass
class Wiring:
    """What every shard of a daemon shares."""

    settings: RedisSettings
    keys: KeyFilter
    loops: Loops
    report_unqueued: Callable[[bytes, str], None]
    wake_workers: Callable[[], None]
    on_subscribed: Callable[[Shard], None]
    configure_redis: bool = False
    elsewhere: Callable[[bytes], Keyspace | None] | None = None
    """In a cluster: the keyspace of the shard that serves a key now (see `Ledger`)."""
    connect: Callable[[Address], redis.Redis] | None = None
    """In a cluster: a client of one node (see `ClusterEvents`)."""
    shard_at: Callable[[Address], Keyspace | None] | None = None
    """In a cluster: the keyspace of the shard of the primary at an address."""


class Shard:
    def __init__(
        self,
        *,
        target: RedisTarget,
        client: redis.Redis,
        keyspace: Keyspace,
        wiring: Wiring,
        listen: bool,
        node: Address | None = None,
        scanned: redis.Redis | None = None,
    ) -> None:
        """`node`: the cluster node this shard's listener is on (None: the only shard);
        `scanned`: a client of it (see `Ledger`)."""
        self.node = node
        self.label = f"{node[0]}:{node[1]}" if node else ""
        self.tag = keyspace.tag
        self.keyspace = keyspace
        self.queue = JobQueue(client, keyspace)
        self.listener: Listener | None = None
        self.dispatcher: Dispatcher | None = None
        self.sweeper: Sweeper | None = None
        if listen:
            self._listen_with(target, client, wiring, scanned)

    def _listen_with(
        self,
        target: RedisTarget,
        client: redis.Redis,
        wiring: Wiring,
        scanned: redis.Redis | None,
    ) -> None:
        settings, loops, suffix = wiring.settings, wiring.loops, self.label and f"@{self.label}"
        ledger = Ledger(
            client,
            self.keyspace,
            settings.capture_values,
            settings.max_value_bytes,
            scanned=scanned,
            elsewhere=wiring.elsewhere,
        )
        markers = Markers()
        self.dispatcher = Dispatcher(
            ledger=ledger,
            markers=markers,
            keys=wiring.keys,
            report_unqueued=wiring.report_unqueued,
            wake_workers=wiring.wake_workers,
            beat=loops.beat_for(f"dispatcher{suffix}"),
            cluster=self._cluster_events(scanned, ledger, wiring),
        )
        self.listener = Listener(
            target=target,
            keyspace=self.keyspace,
            hear=self.dispatcher.hear,
            on_subscribed=lambda: wiring.on_subscribed(self),
            configure_redis=wiring.configure_redis,
            beat=loops.beat_for(f"listener{suffix}"),
            node=self.label,
        )
        self.sweeper = Sweeper(
            ledger=ledger,
            markers=markers,
            subscribed=self.listener.subscribed,
            keys=wiring.keys,
            beat=loops.beat_for(f"sweeper{suffix}"),
        )
        for component in self.components():
            component.name += suffix

    @staticmethod
    def _cluster_events(
        scanned: redis.Redis | None, ledger: Ledger, wiring: Wiring
    ) -> ClusterEvents | None:
        if scanned is None or wiring.connect is None or wiring.shard_at is None:
            return None
        return ClusterEvents(scanned, ledger, wiring.connect, wiring.shard_at)

    def components(self) -> list[Component]:
        """The listening components, in the order to start them."""
        if self.listener is None or self.dispatcher is None or self.sweeper is None:
            return []
        return [self.dispatcher, self.sweeper, self.listener]

    def stop(self, deadline: float) -> None:
        """In this order, so that the dispatcher applies all that the listener heard."""
        for component in reversed(self.components()):
            component.stop(deadline)

    def subscribed(self) -> bool:
        return self.listener is not None and self.listener.subscribed.is_set()

    def ready(self) -> bool:
        """Subscribed, and the ledger brought up to date once."""
        return self.sweeper is not None and self.subscribed() and self.sweeper.synced.is_set()

    @property
    def unapplied(self) -> int:
        return self.dispatcher.unapplied if self.dispatcher is not None else 0

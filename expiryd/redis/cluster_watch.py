"""The cluster watch: a component that reads the cluster's topology every second and
hands it to the daemon, which moves, adds and retires shards to match (see `cluster`).

Reading it from the cluster, not waiting for an error, is what notices a primary demoted
by `CLUSTER FAILOVER`: its subscribers stay connected and hear only `del` from then on.
"""

from __future__ import annotations

from collections.abc import Callable

import redis

from expiryd.component import Component
from expiryd.liveness import Beat, no_beat
from expiryd.logs import describe_error, get_logger
from expiryd.redis.cluster import Topology
from expiryd.redis.nodes import Address

FOLLOW_CHECK_SECONDS = 1.0
RESHAPE_SECONDS = 300.0


class ClusterWatch(Component):
    def __init__(
        self,
        *,
        read: Callable[[tuple[Address, ...]], Topology],
        changed: Callable[[Topology], None],
        beat: Beat = no_beat,
    ) -> None:
        super().__init__(name="cluster_watch", beat=beat)
        self.read = read
        """Reads the topology from a seed node, else one of those given (see `Shards`)."""
        self.changed = changed
        """Given each topology read; it compares it with the shards it has."""
        self._complained = False
        self._known: tuple[Address, ...] = ()
        """The nodes of the last topology read: asked when no seed answers."""
        self._log = get_logger()

    def run(self) -> None:
        while not self.halt.wait(FOLLOW_CHECK_SECONDS):
            self.beat()
            try:
                topology = self.read(self._known)
            except (redis.RedisError, redis.exceptions.RedisClusterException, OSError) as exc:
                if not self._complained:
                    self._complained = True
                    self._log.warning("cluster.unanswered", error=describe_error(exc))
                continue
            self._complained = False
            self._known = topology.nodes
            try:
                # Moving shards may take a while: leaving ones apply what they heard,
                # retired ledgers are handed over.
                self.beat(RESHAPE_SECONDS)
                self.changed(topology)
            except Exception as exc:  # the watch must outlive any one reshape
                self._log.error("cluster.reshape_failed", error=describe_error(exc), exc_info=True)

"""What a daemon says about itself every few seconds, called by its pulse: the one-line
STATUS= that `systemctl status` shows, the heartbeat in Redis that `expiryd status` reads,
and the gauges of the metrics. Redis out of reach: the line says so, and the heartbeat
and gauges wait for the next report."""

from __future__ import annotations

import os
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from expiryd import __version__, defaults
from expiryd.liveness import Loops
from expiryd.logs import last_problem
from expiryd.redis.connections import CONNECTION_ERRORS
from expiryd.redis.keyspace import Keyspace
from expiryd.redis.registry import Heartbeat, Registry
from expiryd.service.metrics import Metrics
from expiryd.service.notify import Notifier
from expiryd.service.status import Figures, combine, read_figures
from expiryd.tally import Tally


@dataclass
class Reporter:
    client: redis.Redis
    """A connection of its own, quick to give up: a hung Redis must not hold up the pulse."""
    keyspace: Keyspace
    notifier: Notifier
    tally: Tally
    loops: Loops
    subscribed: Callable[[], bool] | None
    """Whether every listener is subscribed; None for a daemon that only works."""
    metrics: Metrics | None
    shards: Callable[[], list[Keyspace]] | None = None
    """Where each shard keeps its state (a cluster's several); None: `keyspace` alone."""

    def __post_init__(self) -> None:
        self.daemon_id = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"
        self.started_at = time.time()
        self._registry = Registry(self.client, self.keyspace)
        if self.metrics is not None:
            self._watch_live(self.metrics)

    def use_metrics(self, metrics: Metrics) -> None:
        """Report into `metrics` from now on (a reload turned them on)."""
        self.metrics = metrics
        self._watch_live(metrics)

    def report(self, stopping: bool = False) -> None:
        try:
            keyspaces = self.shards() if self.shards else [self.keyspace]
            figures: Figures | None = combine([read_figures(self.client, k) for k in keyspaces])
        except (redis.RedisError, *CONNECTION_ERRORS):
            figures = None
        self.notifier.send(STATUS=self.summary(figures))
        if figures is None:
            return
        if self.metrics is not None:
            self._set_gauges(self.metrics, figures)
        try:
            self._registry.write(self.heartbeat(stopping))
            if random.random() < defaults.STATUS_SECONDS / 600:  # about every ten minutes
                self._registry.forget_stale()
        except (redis.RedisError, *CONNECTION_ERRORS):
            pass

    def summary(self, figures: Figures | None) -> str:
        """subscribed or not; the queue; what was handled and when last."""
        heard = "workers only"
        if self.subscribed is not None:
            heard = "subscribed" if self.subscribed() else "NOT subscribed"
        jobs = "Redis unreachable"
        if figures is not None:
            jobs = ", ".join(f"{n:,} {state}" for state, n in figures.jobs.items())
        handled = sum(self.tally.by_outcome().values())
        last = self.tally.last_handled
        since = f", last {time.time() - last:.0f}s ago" if last else ""
        return f"{heard}; jobs: {jobs}; handled {handled:,}{since}"

    def heartbeat(self, stopping: bool) -> Heartbeat:
        now = time.time()
        handled: dict[str, dict[str, int]] = {}
        for (route, outcome), count in self.tally.by_route().items():
            handled.setdefault(route, {})[outcome.value] = count
        listening = self.subscribed is not None
        return Heartbeat(
            daemon=self.daemon_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            version=__version__,
            mode="run" if listening else "work",
            started_at=self.started_at,
            beat_at=now,
            alive_until=now if stopping else now + defaults.HEARTBEAT_LIFE_SECONDS,
            subscribed=bool(self.subscribed and self.subscribed()) and not stopping,
            handled=handled,
            last_handled=self.tally.last_handled,
            last_problem=last_problem(),
            stalled={name: round(silent, 1) for name, silent in self.loops.overdue().items()},
        )

    def _set_gauges(self, metrics: Metrics, figures: Figures) -> None:
        for state, count in figures.jobs.items():
            metrics.jobs.labels(state).set(count)
        metrics.ledger_keys.set(figures.ledger_keys)
        metrics.oldest_ready.set(figures.oldest_ready_s or 0)
        metrics.last_heartbeat.set(time.time())

    def _watch_live(self, metrics: Metrics) -> None:
        """Gauges read at each scrape, from what the daemon knows without asking Redis."""
        subscribed = self.subscribed
        metrics.up.set_function(lambda: 0 if self.loops.overdue() else 1)
        metrics.subscribed.set_function(lambda: int(bool(subscribed and subscribed())))
        metrics.last_handled.set_function(lambda: self.tally.last_handled or 0)

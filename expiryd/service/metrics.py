"""The optional Prometheus endpoint (`[metrics] listen`), served by prometheus-client
from a thread of its own. Counters and the lateness histogram follow every expiry the
workers settle; the gauges are set with each report of the daemon (every few seconds),
so a scrape never waits on Redis. Every series known in advance starts at 0."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from expiryd.errors import ServiceError
from expiryd.outcomes import Outcome
from expiryd.tally import UNROUTED

LATENESS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
"""Seconds from deadline to handling: 10 ms to an hour."""
JOB_STATES = ("ready", "retrying", "leased", "dead")


class Metrics:
    def __init__(self, routes: Sequence[str]) -> None:
        self.registry = registry = CollectorRegistry()
        self.expiries = Counter(
            "expiryd_expiries",
            "Attempts at expiries by route and outcome, one per expiry.handled log line.",
            ["route", "outcome"],
            registry=registry,
        )
        self.lateness = Histogram(
            "expiryd_lateness_seconds",
            "Seconds from an expiry's deadline to its handling.",
            ["route"],
            buckets=LATENESS_BUCKETS,
            registry=registry,
        )
        self.jobs = Gauge(
            "expiryd_jobs", "Jobs in the queue by state.", ["state"], registry=registry
        )
        self.ledger_keys = Gauge(
            "expiryd_ledger_keys",
            "Watched keys whose deadline the ledger holds.",
            registry=registry,
        )
        self.oldest_ready = Gauge(
            "expiryd_oldest_ready_seconds",
            "How long the oldest job due now has waited for a worker (0: none waits).",
            registry=registry,
        )
        self.reconnects = Counter(
            "expiryd_redis_reconnects",
            "Times the listener subscribed again after losing its connection.",
            registry=registry,
        )
        self.up = Gauge(
            "expiryd_up", "1 while every loop of the daemon keeps moving.", registry=registry
        )
        self.subscribed = Gauge(
            "expiryd_subscribed", "1 while the listener is subscribed.", registry=registry
        )
        self.last_heartbeat = Gauge(
            "expiryd_last_heartbeat_timestamp_seconds",
            "When the daemon last reported (Unix time).",
            registry=registry,
        )
        self.last_handled = Gauge(
            "expiryd_last_handled_timestamp_seconds",
            "When an expiry was last settled (Unix time; 0: none yet).",
            registry=registry,
        )
        self._known_series(routes)
        self._server: Any = None

    def _known_series(self, routes: Sequence[str]) -> None:
        for route in (*routes, UNROUTED):
            for outcome in Outcome:
                self.expiries.labels(route, outcome.value)
            self.lateness.labels(route)
        for state in JOB_STATES:
            self.jobs.labels(state)

    def observe(self, route: str, outcome: Outcome, lateness_s: float | None) -> None:
        """A `Tally` watcher: one settled expiry."""
        self.expiries.labels(route, outcome.value).inc()
        if lateness_s is not None and outcome is not Outcome.RETRY:
            self.lateness.labels(route).observe(max(0.0, lateness_s))

    def serve(self, host: str, port: int) -> None:
        try:
            self._server, _ = start_http_server(port, host, self.registry)
        except OSError as exc:
            raise _cannot_listen(host, port, exc) from None

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def metrics_address_free(host: str, port: int) -> None:
    """A ServiceError unless the endpoint could listen on (host, port) now."""
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        raise _cannot_listen(host, port, exc) from None


def _cannot_listen(host: str, port: int, exc: OSError) -> ServiceError:
    return ServiceError(f"[metrics] listen {host}:{port}: {exc.strerror}")

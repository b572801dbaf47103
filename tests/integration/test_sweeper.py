"""The sweeper thread against a real redis-server, with no listener: markers are heard
only when the test says so."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from expiryd import defaults
from expiryd.redis.keyfilter import KeyFilter
from expiryd.redis.ledger import Ledger
from expiryd.redis.markers import Markers
from expiryd.redis.sweeper import Sweeper
from tests.integration.conftest import KEYSPACE

DUE = 2 * defaults.SWEEP_LIMIT + 10


class WatchedMarkers(Markers):
    """Which markers the sweeper waited for; heard only when the test says so."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[int] = []

    def wait(self, marker_ms: int, timeout: float) -> bool:
        self.asked.append(marker_ms)
        return super().wait(marker_ms, timeout)


@pytest.fixture
def running(
    client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[WatchedMarkers, threading.Event]]:
    """`DUE` deadlines passed whose keys are gone and not yet claimed, as when a burst's
    `expired` events are still on their way; a sweeper running over them, which would
    wait a minute for a marker that is not heard."""
    monkeypatch.setattr(defaults, "MARKER_WAIT_SECONDS", 60.0)
    client.zadd(KEYSPACE.deadlines, {f"k{n}": 1_700_000_000_000 + n for n in range(DUE)})
    heard, subscribed = WatchedMarkers(), threading.Event()
    subscribed.set()
    sweeper = Sweeper(
        ledger=Ledger(client, KEYSPACE),
        markers=heard,
        subscribed=subscribed,
        keys=KeyFilter(KEYSPACE.prefix.encode(), 1024),
    )
    sweeper.start()
    yield heard, subscribed
    assert sweeper.stop(time.monotonic() + 5)


def soon(condition: Callable[[], bool], what: str, seconds: float = 2.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not within {seconds} s: {what}"
        time.sleep(0.02)


def test_a_sweep_waits_for_its_marker_before_the_next(
    client: redis.Redis, running: tuple[WatchedMarkers, threading.Event]
) -> None:
    markers, _ = running
    soon(lambda: bool(markers.asked), "a marker")
    time.sleep(0.5)  # ten sweep intervals: an ungated sweeper would have moved them all
    assert client.zcard(KEYSPACE.gone) == defaults.SWEEP_LIMIT
    markers.heard(markers.asked[-1])
    soon(lambda: client.zcard(KEYSPACE.gone) > defaults.SWEEP_LIMIT, "the next sweep")
    time.sleep(0.3)
    assert client.zcard(KEYSPACE.gone) == 2 * defaults.SWEEP_LIMIT


def test_a_lost_connection_ends_the_wait(
    client: redis.Redis, running: tuple[WatchedMarkers, threading.Event]
) -> None:
    """The marker went with the connection; after the resubscribe the sweeper goes on."""
    markers, subscribed = running
    soon(lambda: bool(markers.asked), "a marker")
    subscribed.clear()
    time.sleep(0.3)
    subscribed.set()
    soon(lambda: client.zcard(KEYSPACE.gone) > defaults.SWEEP_LIMIT, "the next sweep")
    time.sleep(0.3)
    assert client.zcard(KEYSPACE.gone) == 2 * defaults.SWEEP_LIMIT

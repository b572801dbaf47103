"""The sweeper thread against a real redis-server, with no listener: markers are heard
only when the test says so."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis

from expiryd import defaults
from expiryd.ledger import Ledger
from expiryd.queue import JobQueue
from expiryd.sweeper import Sweeper
from tests.integration.conftest import KEYSPACE

DUE = 2 * defaults.SWEEP_LIMIT + 10


class Markers:
    """Stands in for the listener's side: which markers have been heard."""

    def __init__(self) -> None:
        self.heard_until = 0
        self.asked: list[int] = []

    def heard(self, marker_ms: int, timeout: float) -> bool:
        self.asked.append(marker_ms)
        if marker_ms <= self.heard_until:
            return True
        time.sleep(timeout)
        return False


@pytest.fixture
def running(client: redis.Redis) -> Iterator[tuple[Markers, threading.Event]]:
    """`DUE` keys recorded, gone from Redis and not yet claimed, as when a burst's
    `expired` events are still on their way; a sweeper running over them."""
    with client.pipeline(transaction=False) as pipe:
        for n in range(DUE):
            pipe.set(f"k{n}", "v", px=500)
        pipe.execute()
    ledger = Ledger(client, KEYSPACE)
    assert ledger.record([f"k{n}".encode() for n in range(DUE)]) == DUE
    time.sleep(0.7)
    markers, subscribed, stop = Markers(), threading.Event(), threading.Event()
    subscribed.set()
    sweeper = Sweeper(
        ledger, JobQueue(client, KEYSPACE), "me:", subscribed, markers.heard, stop, 1024
    )
    thread = threading.Thread(target=sweeper.run, daemon=True)
    thread.start()
    yield markers, subscribed
    stop.set()
    thread.join(5)


def until(condition: object, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.02)


def test_a_sweep_waits_for_its_marker_before_the_next(
    client: redis.Redis, running: tuple[Markers, threading.Event]
) -> None:
    markers, _ = running
    until(lambda: markers.asked)
    time.sleep(0.5)  # ten sweep intervals: an ungated sweeper would have moved them all
    assert client.zcard(KEYSPACE.gone) == defaults.SWEEP_LIMIT
    markers.heard_until = markers.asked[-1]
    until(lambda: client.zcard(KEYSPACE.gone) > defaults.SWEEP_LIMIT)
    assert client.zcard(KEYSPACE.gone) == 2 * defaults.SWEEP_LIMIT


def test_a_lost_connection_ends_the_wait(
    client: redis.Redis, running: tuple[Markers, threading.Event]
) -> None:
    """The marker went with the connection; after the resubscribe the sweeper goes on."""
    markers, subscribed = running
    until(lambda: markers.asked)
    subscribed.clear()
    time.sleep(0.3)
    subscribed.set()
    until(lambda: client.zcard(KEYSPACE.gone) > defaults.SWEEP_LIMIT)
    assert client.zcard(KEYSPACE.gone) == 2 * defaults.SWEEP_LIMIT

"""The dispatcher and a worker in-process, in burst mode, against a real redis-server and
database: events heard in, rows changed and lines logged out, with no daemon around
them. (The e2e suite runs the daemon as users do; this runs the same loops quickly.)"""

from __future__ import annotations

import time
import tomllib
from collections.abc import Iterator

import pytest
import redis
from structlog.testing import capture_logs

from expiryd import config
from expiryd.database.engine import make_engine
from expiryd.handlers import build_handlers
from expiryd.redis.dispatch import Dispatcher
from expiryd.redis.keyfilter import KeyFilter
from expiryd.redis.ledger import Ledger
from expiryd.redis.listener import Event, Kind
from expiryd.redis.markers import Markers
from expiryd.redis.queue import JobQueue
from expiryd.tally import Tally
from expiryd.worker import Worker, report_unqueued
from tests.integration.conftest import KEYSPACE
from tests.support.shop import execute, rows

ROUTE = """
[[routes]]
pattern = "seen:{name}"
handler = "sql"
sql = "INSERT INTO seen (name) VALUES (:name)"
"""
KEYS = KeyFilter(KEYSPACE.prefix.encode(), 64)
OWN = KEYSPACE.prefix.encode() + b"anything"
NOT_UTF8 = b"seen:\xff"
TOO_LONG = b"seen:" + b"x" * 64


@pytest.fixture
def pipeline(client: redis.Redis, database_url: str) -> Iterator[tuple[Dispatcher, Worker, Tally]]:
    execute(database_url, "CREATE TABLE seen (name VARCHAR(20) NOT NULL UNIQUE)")
    loaded = config.parse(tomllib.loads(ROUTE), "t.toml", {"EXPIRYD_DATABASE_URL": database_url})
    engine = make_engine(loaded.database)
    tally = Tally()
    queue = JobQueue(client, KEYSPACE)
    worker = Worker(
        queues=lambda: [queue],
        routes=loaded.routes,
        handlers=build_handlers(loaded, engine, client),
        settings=loaded.worker,
        keys=KEYS,
        tally=tally,
    )
    dispatcher = Dispatcher(
        ledger=Ledger(client, KEYSPACE),
        markers=Markers(),
        keys=KEYS,
        report_unqueued=lambda key, reason: report_unqueued(tally, key, reason),
        wake_workers=worker.wake.set,
    )
    yield dispatcher, worker, tally
    engine.dispose()


def expire(client: redis.Redis, dispatcher: Dispatcher, keys: list[bytes]) -> None:
    """Each key gets a TTL that is heard, then expires and that is heard."""
    for key in keys:
        client.set(key, 1, px=30)
        assert dispatcher.hear(Event(Kind.EXPIRE, key), 1.0)
    time.sleep(0.1)
    assert not client.exists(*keys)
    for key in keys:
        assert dispatcher.hear(Event(Kind.EXPIRED, key), 1.0)


def test_heard_expiries_are_applied_once_and_keys_no_route_can_take_are_said_once(
    client: redis.Redis,
    database_url: str,
    pipeline: tuple[Dispatcher, Worker, Tally],
) -> None:
    dispatcher, worker, _ = pipeline
    with capture_logs() as logs:
        expire(client, dispatcher, [b"seen:a", b"seen:b", OWN, NOT_UTF8, TOO_LONG])
        assert dispatcher.hear(Event(Kind.EXPIRED, b"seen:a"), 1.0)  # heard twice
        dispatcher.work(burst=True)
        worker.work(burst=True)

    assert sorted(r[0] for r in rows(database_url, "SELECT name FROM seen")) == ["a", "b"]
    handled = [x for x in logs if x["event"] == "expiry.handled"]
    by_key = {x["key"]: x for x in handled}
    assert len(handled) == 4, handled
    assert by_key["seen:a"]["outcome"] == by_key["seen:b"]["outcome"] == "applied"
    assert by_key["seen:\\xff"]["reason"] == "key is not valid UTF-8"
    too_long = next(x for k, x in by_key.items() if k.startswith("seen:xxx"))
    assert too_long["reason"] == "key is 69 bytes, over max_key_bytes=64"
    assert not client.zcard(KEYSPACE.ready) and not client.zcard(KEYSPACE.leases)
    assert not client.hlen(KEYSPACE.jobs), "keys no route can take queue no job"


def test_the_scan_records_only_keys_the_filter_watches(client: redis.Redis) -> None:
    for key in (b"seen:a", OWN, NOT_UTF8, TOO_LONG):
        client.set(key, 1, ex=600)
    assert Ledger(client, KEYSPACE).scan(KEYS) == 1
    assert client.zrange(KEYSPACE.deadlines, 0, -1) == [b"seen:a"]

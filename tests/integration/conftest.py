from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from expiryd.redis.keyspace import Keyspace
from tests.support.servers import RedisServer

KEYSPACE = Keyspace("expiryd:", 15)


@pytest.fixture
def client(redis_db: RedisServer) -> Iterator[redis.Redis]:
    """A client of the flushed test DB, closed after the test."""
    with redis_db.client() as client:
        yield client

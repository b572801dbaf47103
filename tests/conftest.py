"""Real servers for the tests that need them: one redis-server and one MariaDB per session,
a clean Redis DB and a fresh MariaDB database per test."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.servers import MariaDB, RedisServer

_databases = itertools.count(1)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_db(redis_server: RedisServer) -> RedisServer:
    """The session's Redis, flushed, with expired-key events on, as a user would set it."""
    if redis_server.process is None:
        redis_server.start()
    client = redis_server.client()
    client.execute_command("ACL", "SETUSER", "default", "on", "nopass", "~*", "&*", "+@all")
    client.flushall()
    client.config_set("notify-keyspace-events", "Egx")
    client.close()
    return redis_server


@pytest.fixture(scope="session")
def mariadb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDB]:
    server = MariaDB(tmp_path_factory.mktemp("mariadb"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def mysql_url(mariadb: MariaDB) -> Iterator[str]:
    """A fresh, empty MariaDB database for this test."""
    if mariadb.process is None:
        mariadb.start()
    name = f"t{next(_databases)}"
    yield mariadb.create_database(name)
    if mariadb.process is not None:
        mariadb.drop_database(name)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'orders.sqlite3'}"


@pytest.fixture(params=["mariadb", "sqlite"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each test that takes it runs once against MariaDB and once against SQLite."""
    fixture = "mysql_url" if request.param == "mariadb" else "sqlite_url"
    return str(request.getfixturevalue(fixture))

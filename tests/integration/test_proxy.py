"""The fault-injection proxy in front of the real MariaDB: traffic passes through it, and an
armed COMMIT reaches the server while its client loses the connection."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, make_url, text
from sqlalchemy.exc import OperationalError

from tests.support.proxy import FaultProxy
from tests.support.servers import MariaDB

pytestmark = pytest.mark.mysql

PLAIN = {"ssl_disabled": True}


@pytest.fixture
def proxy(mariadb: MariaDB) -> Iterator[FaultProxy]:
    with FaultProxy(mariadb) as proxy:
        yield proxy


@pytest.fixture
def direct(mysql_url: str) -> Iterator[Engine]:
    """The test's database, not through the proxy."""
    engine = create_engine(mysql_url, connect_args=PLAIN)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE items (id INT PRIMARY KEY)"))
    yield engine
    engine.dispose()


@pytest.fixture
def proxied(proxy: FaultProxy, mysql_url: str, direct: Engine) -> Iterator[Engine]:
    """The same database, through the proxy."""
    database = make_url(mysql_url).database
    assert database
    engine = create_engine(proxy.url(database), connect_args=PLAIN)
    yield engine
    engine.dispose()


def ids(engine: Engine) -> list[int]:
    with engine.connect() as connection:
        return list(connection.execute(text("SELECT id FROM items ORDER BY id")).scalars())


def test_queries_pass_through(proxied: Engine, direct: Engine, proxy: FaultProxy) -> None:
    with proxied.begin() as connection:
        assert connection.execute(text("SELECT 1 + 1")).scalar_one() == 2
        connection.execute(text("INSERT INTO items VALUES (1), (2)"))
    assert ids(direct) == [1, 2]
    assert ids(proxied) == [1, 2]
    assert proxy.dropped == 0


def test_a_dropped_commit_reply_is_lost_but_committed(
    proxied: Engine, direct: Engine, proxy: FaultProxy
) -> None:
    proxy.drop_commit_replies(1)
    with pytest.raises(OperationalError) as caught, proxied.begin() as connection:
        connection.execute(text("INSERT INTO items VALUES (1)"))
    assert caught.value.orig is not None
    assert caught.value.orig.args[0] == 2013  # CR_SERVER_LOST
    assert "Lost connection to MySQL server during query" in str(caught.value.orig)
    assert proxy.dropped == 1
    assert ids(direct) == [1]  # the server did commit

    with proxied.begin() as connection:  # disarmed: the next transaction goes through
        connection.execute(text("INSERT INTO items VALUES (2)"))
    assert proxy.dropped == 1
    assert ids(direct) == [1, 2]

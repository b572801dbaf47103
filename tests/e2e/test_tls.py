"""TLS to Redis (rediss://) and to MariaDB (tls = "required"), with a CA of the test's
own on loopback: servers that accept TLS only, and a wrong CA refused in one line."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest

from tests.e2e.conftest import REPO, write_config
from tests.support.certs import Certs, make_certs
from tests.support.daemon import DaemonProcess, run_cli, setex
from tests.support.servers import MariaDB, RedisServer
from tests.support.shop import ORDER_ROUTES, create_orders

pytestmark = pytest.mark.mysql


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls_redis(certs: Certs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis-tls"), tls=certs)  # no plain port
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tls_mariadb(certs: Certs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDB]:
    server = MariaDB(tmp_path_factory.mktemp("mariadb-tls"), tls=certs)
    server.start()
    yield server
    server.stop()


def _tls_only_database(server: MariaDB, name: str) -> str:
    """A database with orders SN1 (unpaid); from now on its user may connect over TLS only."""
    url = server.create_database(name)
    create_orders(url, {"SN1": 0})
    with server.admin() as admin, admin.cursor() as cursor:
        cursor.execute("ALTER USER 'expiryd'@'%' REQUIRE SSL")
    return url


def _status(server: MariaDB, database: str) -> int:
    with server.admin(database) as admin, admin.cursor() as cursor:
        cursor.execute("SELECT status FROM orders WHERE order_sn = 'SN1'")
        return int(cursor.fetchone()[0])


def _config(path: Path, redis_url: str, database_url: str, ca: Path) -> Path:
    tls = f'tls = "required"\ntls_ca = "{ca}"\n'
    return write_config(path, redis_url, database_url, tls + ORDER_ROUTES)


def test_the_daemon_works_over_tls_to_redis_and_mariadb(
    certs: Certs, tls_redis: RedisServer, tls_mariadb: MariaDB, tmp_path: Path
) -> None:
    url = _tls_only_database(tls_mariadb, "tls1")
    with pytest.raises(pymysql.err.OperationalError):  # without TLS: refused
        pymysql.connect(
            host="127.0.0.1", port=tls_mariadb.port, user="expiryd",
            password=tls_mariadb.password, ssl_disabled=True,
        )  # fmt: skip
    config = _config(tmp_path / "expiryd.toml", tls_redis.url(), url, certs.ca)
    assert tls_redis.url().startswith("rediss://")

    check = run_cli("check", "--config", str(config))
    assert check.returncode == 0, check.stdout + check.stderr
    daemon = DaemonProcess(config, env={"PYTHONPATH": str(REPO)})
    try:
        daemon.wait_subscribed()
        setex(tls_redis.client(), "order:cancel:SN1", 1)
        (handled,) = daemon.wait_for_event("expiry.handled")
        assert handled["outcome"] == "applied"
        assert _status(tls_mariadb, "tls1") == 3
        assert daemon.stop() == 0
    finally:
        if daemon.running:
            daemon.stop()


def test_servers_whose_certificates_another_ca_signed_are_refused_in_one_line_each(
    tls_redis: RedisServer, tls_mariadb: MariaDB, tmp_path: Path
) -> None:
    stranger = make_certs(tmp_path / "stranger")
    url = tls_mariadb.url("mysql")
    redis_url = tls_redis.url().split("?")[0] + f"?ssl_ca_certs={stranger.ca}"
    config = _config(tmp_path / "expiryd.toml", redis_url, url, stranger.ca)
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 1
    failures = [line for line in result.stdout.splitlines() if "certificate verify failed" in line]
    assert len(failures) == 2, result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_a_certificate_for_another_host_is_refused(tmp_path: Path, sqlite_url: str) -> None:
    """Signed by the CA expiryd trusts, but for another name than the one it dials."""
    elsewhere = make_certs(tmp_path / "elsewhere", names="DNS:redis.elsewhere.invalid")
    server = RedisServer(tmp_path / "redis", tls=elsewhere)
    server.start()
    try:
        config = write_config(tmp_path / "expiryd.toml", server.url(), sqlite_url, ORDER_ROUTES)
        result = run_cli("check", "--config", str(config))
    finally:
        server.stop()
    assert result.returncode == 1
    (failure,) = [line for line in result.stdout.splitlines() if "Redis at" in line]
    assert "mismatch" in failure or "doesn't match" in failure, failure

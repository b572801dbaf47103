"""Throwaway redis-server and MariaDB instances on free loopback ports, in temp dirs."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pymysql
import redis

if TYPE_CHECKING:
    from tests.support.certs import Certs


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(ready: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except Exception:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{what} not ready after {timeout}s")


def require(binary: str) -> str:
    found = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/bin")
    if not found:
        raise RuntimeError(f"{binary} not found; ./scripts/test installs it")
    return found


class RedisServer:
    def __init__(
        self,
        workdir: Path,
        notify_flags: str = "Egx",
        config_file: Path | None = None,
        tls: Certs | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        """`config_file`: a redis.conf to start from; the arguments below override it.
        `tls`: serve TLS only, with this certificate. `extra_args`: more redis-server
        arguments (`--replicaof`, say)."""
        self.workdir = workdir
        self.port = free_port()
        self.notify_flags = notify_flags
        self.config_file = config_file
        self.tls = tls
        self.extra_args = extra_args
        self.detached = False
        """Started in a session of its own, to outlive the process that started it."""
        self.process: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    def url(self, db: int = 15) -> str:
        if self.tls:
            return f"rediss://127.0.0.1:{self.port}/{db}?ssl_ca_certs={self.tls.ca}"
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 15) -> redis.Redis:
        if self.tls:
            # The tests' own client checks the CA only: a test may serve a certificate
            # for another host on purpose, to see expiryd refuse it.
            return redis.Redis(
                host="127.0.0.1",
                port=self.port,
                db=db,
                ssl=True,
                ssl_ca_certs=str(self.tls.ca),
                ssl_check_hostname=False,
            )
        return redis.Redis(host="127.0.0.1", port=self.port, db=db)

    def _listen_args(self) -> list[str]:
        if not self.tls:
            return ["--port", str(self.port)]
        return [
            *("--port", "0", "--tls-port", str(self.port)),
            *("--tls-cert-file", str(self.tls.cert), "--tls-key-file", str(self.tls.key)),
            *("--tls-ca-cert-file", str(self.tls.ca), "--tls-auth-clients", "no"),
        ]

    def start(self) -> None:
        config = [str(self.config_file)] if self.config_file else []
        self.process = subprocess.Popen(
            [
                require("redis-server"),
                *config,
                *self._listen_args(),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.workdir),
                "--save",
                "",
                "--appendonly",
                "no",
                "--notify-keyspace-events",
                self.notify_flags,
                "--logfile",
                str(self.workdir / "redis.log"),
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            start_new_session=self.detached,
        )
        wait_until(self._answers, 10, "redis-server")

    def _answers(self) -> bool:
        with self.client(0) as client:
            return bool(client.ping())

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None


class MariaDB:
    """A MariaDB server with a database user `expiryd` who may create databases."""

    password = "s3cret-pw"

    def __init__(self, workdir: Path, buffer_pool: str = "64M", tls: Certs | None = None) -> None:
        """`tls`: offer TLS with this certificate (plain connections stay possible)."""
        self.tls = tls
        self.workdir = workdir
        self.buffer_pool = buffer_pool
        self.port = free_port()
        self.socket = str(workdir / "mysqld.sock")
        self.process: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    def url(self, database: str) -> str:
        return f"mysql+pymysql://expiryd:{self.password}@127.0.0.1:{self.port}/{database}"

    def admin(self, database: str | None = None) -> pymysql.Connection:
        return pymysql.connect(
            unix_socket=self.socket, user="root", database=database, autocommit=True
        )

    def start(self) -> None:
        datadir = self.workdir / "data"
        first = not datadir.exists()
        if first:
            subprocess.run(
                [
                    require("mariadb-install-db"),
                    "--no-defaults",
                    f"--datadir={datadir}",
                    *self._user(),
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        self.process = subprocess.Popen(
            [
                require("mariadbd"),
                "--no-defaults",
                f"--datadir={datadir}",
                *self._user(),
                f"--port={self.port}",
                "--bind-address=127.0.0.1",
                f"--socket={self.socket}",
                f"--pid-file={self.workdir / 'mysqld.pid'}",
                "--skip-log-bin",
                "--skip-name-resolve",
                f"--innodb-buffer-pool-size={self.buffer_pool}",
                "--innodb-flush-log-at-trx-commit=2",
                f"--log-error={self.workdir / 'error.log'}",
                *self._tls_args(),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._answers, 30, "mariadbd")
        if first:
            self._create_user()

    def _tls_args(self) -> list[str]:
        if not self.tls:
            return []
        return [
            f"--ssl-ca={self.tls.ca}",
            f"--ssl-cert={self.tls.cert}",
            f"--ssl-key={self.tls.key}",
        ]

    def _answers(self) -> bool:
        # Knock first: a failed PyMySQL connect leaves its socket to the garbage collector.
        with socket.socket(socket.AF_UNIX) as knock:
            knock.connect(self.socket)
        with self.admin():
            return True

    def _user(self) -> list[str]:
        return ["--user=root"] if os.geteuid() == 0 else []

    def _create_user(self) -> None:
        with self.admin() as connection, connection.cursor() as cursor:
            cursor.execute(f"CREATE USER 'expiryd'@'%' IDENTIFIED BY '{self.password}'")
            cursor.execute("GRANT ALL ON *.* TO 'expiryd'@'%'")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)
        self.process = None

    def create_database(self, name: str) -> str:
        with self.admin() as connection, connection.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
            cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        return self.url(name)

    def drop_database(self, name: str) -> None:
        with self.admin() as connection, connection.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")

"""The database engine: a short-lived connection per unit of work unless pooling is asked for."""

from __future__ import annotations

import ssl
from typing import Any

from sqlalchemy import Engine, MetaData, Table, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchTableError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from expiryd import defaults
from expiryd.config import DatabaseSettings
from expiryd.errors import ConfigError, ServiceError
from expiryd.liveness import beat_here
from expiryd.logs import describe_error
from expiryd.redact import redact_url, scrub

_MYSQL_BACKENDS = ("mysql", "mariadb")


def parse_url(settings: DatabaseSettings) -> URL:
    """The SQLAlchemy URL, with PyMySQL as the driver when a MySQL URL names none."""
    try:
        url = make_url(settings.url)
    except (ArgumentError, ValueError):
        raise ConfigError(
            f"[database] url {redact_url(settings.url)!r} is not a database URL, "
            "e.g. mysql+pymysql://user:password@127.0.0.1:3306/shop"
        ) from None
    if url.drivername in _MYSQL_BACKENDS:
        url = url.set(drivername=f"{url.drivername}+pymysql")
    return url


def is_mysql(url: URL) -> bool:
    return url.get_backend_name() in _MYSQL_BACKENDS


def make_engine(
    settings: DatabaseSettings, io_timeout: float | None = None, workers: int = 1
) -> Engine:
    """The engine; with `io_timeout`, a statement that waits longer than that for the
    server fails (and is retried) instead of hanging its worker. A pool keeps a
    connection for each of `workers` at least."""
    url = parse_url(settings)
    options: dict[str, Any] = {"hide_parameters": True}
    if settings.pool == "none":
        options["poolclass"] = NullPool
    else:
        options.update(
            pool_pre_ping=True,
            pool_recycle=defaults.POOL_RECYCLE_SECONDS,
            pool_size=max(defaults.POOL_SIZE, workers),
        )
    if is_mysql(url):
        options["connect_args"] = _mysql_connect_args(settings)
        if io_timeout:
            timeout = max(1, int(io_timeout))
            options["connect_args"].update(read_timeout=timeout, write_timeout=timeout)
    elif io_timeout and url.get_backend_name() == "sqlite":
        options["connect_args"] = {"timeout": io_timeout}
    try:
        engine = create_engine(url, **options)
    except (ArgumentError, ImportError) as exc:
        raise ConfigError(
            f"[database] url {redact_url(settings.url)!r}: {scrub(str(exc))}"
        ) from None
    event.listen(engine, "before_cursor_execute", _beat)
    return engine


def _beat(*_statement: Any) -> None:
    """Each statement is progress for the loop whose thread sends it (see `liveness`)."""
    beat_here()


def _mysql_connect_args(settings: DatabaseSettings) -> dict[str, Any]:
    """Say what we want of TLS: PyMySQL 1.2+ would otherwise try it on every connection,
    building a new context (CA bundle and all) each time."""
    args: dict[str, Any] = {"connect_timeout": 5, "charset": "utf8mb4"}
    if settings.tls == "off":
        args["ssl_disabled"] = True
    else:
        try:
            args["ssl"] = ssl.create_default_context(cafile=settings.tls_ca)
        except OSError as exc:
            raise ConfigError(
                f"[database] tls_ca: cannot load {settings.tls_ca!r}: {exc}"
            ) from None
    return args


def reflect_table(engine: Engine, name: str) -> Table:
    """The table as the database describes it; a ConfigError when it is not there."""
    try:
        return Table(name, MetaData(), autoload_with=engine)
    except NoSuchTableError:
        raise ConfigError(f"table {name!r} does not exist in {describe_target(engine)}") from None
    except SQLAlchemyError as exc:
        raise ServiceError(
            f"cannot read table {name!r} from {describe_target(engine)}: {describe_error(exc)}"
        ) from None


def describe_target(engine: Engine) -> str:
    return redact_url(engine.url.render_as_string(hide_password=False))


def skips_locked_rows(engine: Engine) -> bool:
    """Whether the server has SELECT ... FOR UPDATE SKIP LOCKED: MariaDB 10.6 and later,
    MySQL 8.0 and later. (SQLite has no row locks to skip.)"""
    if not is_mysql(engine.url):
        return False
    with engine.connect() as connection:
        dialect = connection.dialect
        version = dialect.server_version_info or ()
    minimum = (10, 6) if getattr(dialect, "is_mariadb", False) else (8, 0)
    return tuple(version[:2]) >= minimum

"""`expiryd check`: everything `run` needs, checked one by one, each on its own line."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from sqlalchemy import Engine, text

from expiryd.config import Config
from expiryd.database import inbox
from expiryd.database.engine import describe_target, make_engine
from expiryd.errors import UserError
from expiryd.handlers import build_handlers
from expiryd.logs import describe_error
from expiryd.redis.connections import (
    CONNECTION_ERRORS,
    RedisTarget,
    ensure_notifications,
    eviction_problem,
)
from expiryd.redis.keyspace import Keyspace
from expiryd.redis.queue import JobQueue


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    message: str

    def __str__(self) -> str:
        return f"{'ok' if self.ok else 'FAIL'}: {self.message}"


def run_checks(config: Config) -> Iterator[CheckResult]:
    yield CheckResult(True, f"config {config.source} ({len(config.routes)} routes)")
    yield _attempt(lambda: _check_redis(config))
    engine = make_engine(config.database)
    try:
        database = _attempt(lambda: _check_database(engine))
        yield database
        if database.ok:
            yield _attempt(lambda: _check_handlers(config, engine))
            if config.database.inbox:
                yield _attempt(lambda: _check_inbox(config, engine))
    finally:
        engine.dispose()


def _attempt(check: Callable[[], str]) -> CheckResult:
    try:
        return CheckResult(True, check())
    except UserError as exc:
        return CheckResult(False, str(exc))
    except Exception as exc:  # any other failure is a failed check, reported the same way
        return CheckResult(False, describe_error(exc))


def _check_redis(config: Config) -> str:
    target = RedisTarget.from_url(config.redis.url)
    client = target.client()
    try:
        client.ping()
        flags = ensure_notifications(target, client, configure=False)
        eviction = eviction_problem(client)
        jobs = JobQueue(client, Keyspace(config.redis.prefix, target.db)).counts()
    except CONNECTION_ERRORS as exc:
        raise UserError(f"Redis at {target.safe_url}: {describe_error(exc)}") from None
    finally:
        client.close()
    if eviction:
        raise UserError(f"Redis at {target.safe_url}: {eviction}")
    queue = ", ".join(f"{n} {state}" for state, n in jobs.items())
    shown = UNVERIFIED if flags is None else repr(flags)
    return f"Redis at {target.safe_url}, notify-keyspace-events {shown}; jobs: {queue}"


UNVERIFIED = "not readable by this user (no CONFIG GET): make sure redis.conf sets it"


def _check_database(engine: Engine) -> str:
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:
        raise UserError(f"database {describe_target(engine)}: {describe_error(exc)}") from None
    return f"database {describe_target(engine)}"


def _check_handlers(config: Config, engine: Engine) -> str:
    client = RedisTarget.from_url(config.redis.url).client()
    handlers = build_handlers(config, engine, client, create_inbox=False)
    return f"{len(handlers)} handlers ready, tables and columns present"


def _check_inbox(config: Config, engine: Engine) -> str:
    name = config.database.inbox_table
    if inbox.exists(engine, name):
        return f"inbox table {name!r} present"
    return (
        f"inbox table {name!r} not there yet: `expiryd run` creates it if its user may "
        f"CREATE TABLE; else {inbox.how_to_create(name, engine)}"
    )

"""`expiryd check`: everything `run` needs, checked one by one, each on its own line."""

from __future__ import annotations

import functools
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
    nodes_of,
)
from expiryd.redis.queue import JobQueue
from expiryd.redis.sentinel import Address
from expiryd.redis.shards import shard_keyspaces


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    message: str

    def __str__(self) -> str:
        return f"{'ok' if self.ok else 'FAIL'}: {self.message}"


def run_checks(config: Config) -> Iterator[CheckResult]:
    yield CheckResult(True, f"config {config.source} ({len(config.routes)} routes)")
    yield _attempt(lambda: _check_redis(config))
    target = RedisTarget.from_url(config.redis.url)
    if target.group is not None or target.cluster is not None:
        yield from _check_nodes(target)
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
        # A Sentinel group's or cluster's flags are checked node by node (`_check_nodes`).
        several = target.group or target.cluster
        flags = "" if several else ensure_notifications(target, client, configure=False)
        eviction = eviction_problem(client)
        shards = shard_keyspaces(target, client, config.redis.prefix)
        counts = [JobQueue(client, keyspace).counts() for keyspace in shards]
        jobs = {state: sum(c[state] for c in counts) for state in counts[0]}
    except CONNECTION_ERRORS as exc:
        raise UserError(f"Redis at {target.safe_url}: {describe_error(exc)}") from None
    finally:
        client.close()
    if eviction:
        raise UserError(f"Redis at {target.safe_url}: {eviction}")
    queue = ", ".join(f"{n} {state}" for state, n in jobs.items())
    if several:
        return f"Redis at {target.safe_url}; jobs: {queue}"
    shown = UNVERIFIED if flags is None else repr(flags)
    return f"Redis at {target.safe_url}, notify-keyspace-events {shown}; jobs: {queue}"


def _check_nodes(target: RedisTarget) -> Iterator[CheckResult]:
    """Every node of a Sentinel group or cluster: a replica promoted without the flags
    hears nothing."""
    try:
        nodes = nodes_of(target)
    except CONNECTION_ERRORS as exc:
        yield CheckResult(False, f"{target.safe_url}: {describe_error(exc)}")
        return
    for role, node in nodes:
        yield _attempt(functools.partial(_check_node, target, role, node))
    if all(role == "primary" for role, _ in nodes):
        yield CheckResult(True, f"{target.safe_url}: no replica to fail over to")


def _check_node(target: RedisTarget, role: str, node: Address) -> str:
    client = target.node_client(node)
    try:
        flags = ensure_notifications(target, client, configure=False, node=node)
    except CONNECTION_ERRORS as exc:
        raise UserError(f"{role} {target.describe(node)}: {describe_error(exc)}") from None
    except UserError as exc:
        raise UserError(f"{role}: {exc}") from None
    finally:
        client.close()
    shown = UNVERIFIED if flags is None else repr(flags)
    return f"{role} {node[0]}:{node[1]}, notify-keyspace-events {shown}"


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

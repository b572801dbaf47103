"""Handlers: what runs when a routed key expires.

A handler takes the expiries of one route that a worker leased together and gives one
outcome per expiry, in order: a `Result`, or the exception that expiry met. The built-in
handlers change a whole group in one transaction; calling a handler with one `Expiry`
runs just that one. The built-in names are `orders.cancel`, `orders.complete`, `sql` and
`redis.stream`; any other name of the form `module:function` is imported (see
`callables`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import redis
from sqlalchemy import Engine

from expiryd.config import Config
from expiryd.database.inbox import Inbox, exists
from expiryd.errors import ConfigError
from expiryd.expiry import Expiry
from expiryd.liveness import beat_here
from expiryd.outcomes import Ending, Result
from expiryd.routes import Route


class Handler(Protocol):
    def __call__(self, expiry: Expiry) -> Result: ...

    def run_many(self, expiries: Sequence[Expiry]) -> list[Ending]: ...


def run_one(handler: Handler, expiry: Expiry) -> Result:
    """A group handler called with one expiry: its result, or what it met, raised."""
    (outcome,) = handler.run_many([expiry])
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def one_by_one(run: Callable[[Expiry], Result], expiries: Sequence[Expiry]) -> list[Ending]:
    """Each expiry on its own: what one raises is its outcome, not the others'."""
    outcomes: list[Ending] = []
    for expiry in expiries:
        beat_here()
        try:
            outcomes.append(run(expiry))
        except BaseException as exc:  # whatever a handler raises is that expiry's outcome
            outcomes.append(exc)
    return outcomes


BUILT_IN = ("orders.cancel", "orders.complete", "sql", "redis.stream")


def build_handlers(
    config: Config, engine: Engine, client: redis.Redis, create_inbox: bool = True
) -> dict[str, Handler]:
    """One handler per route name, each checked against the database it will use.
    `client`: the watched Redis, for `redis.stream`; `create_inbox`: create the inbox
    table if a handler needs it and it is missing; without, such handlers are built
    without it (for `expiryd check`, which reports the table on its own line)."""
    from expiryd.handlers import callables, orders, sql, stream

    handlers: dict[str, Handler] = {}
    order_table: orders.OrderTable | None = None
    inbox = _Inbox(config, engine, create_inbox)
    for number, route in enumerate(config.routes, 1):
        try:
            if route.handler in orders.HANDLERS:
                order_table = order_table or orders.OrderTable.reflect(config.orders, engine)
                handlers[route.name] = orders.build(route, order_table, inbox.get())
            elif route.handler == "sql":
                handlers[route.name] = sql.build(route, engine, inbox.get())
            elif route.handler == "redis.stream":
                handlers[route.name] = stream.build(route, client, config.redis.prefix)
            elif ":" in route.handler:
                handlers[route.name] = callables.build(route, engine, inbox.get)
            else:
                raise ConfigError(
                    f"unknown handler (known: {', '.join(BUILT_IN)}, or module:function)"
                )
        except ConfigError as exc:
            raise ConfigError(f"{config.source}: {_describe(number, route)}: {exc}") from None
    return handlers


class _Inbox:
    """The inbox, opened (created if need be and allowed) when the first handler that
    commits to the database asks for it; None when `[database] inbox = false`, or when
    it is missing and may not be created."""

    def __init__(self, config: Config, engine: Engine, create: bool) -> None:
        self.settings, self.engine, self.create = config.database, engine, create
        self._inbox: Inbox | None = None

    def get(self) -> Inbox | None:
        if self.settings.inbox and self._inbox is None:
            if not self.create and not exists(self.engine, self.settings.inbox_table):
                return None
            self._inbox = Inbox.open(self.engine, self.settings.inbox_table)
        return self._inbox


def _describe(number: int, route: Route) -> str:
    return f"[[routes]] #{number} ({route.pattern.text!r} -> {route.handler!r})"

"""Handlers: what runs when a routed key expires.

A handler is a callable taking an `Expiry` and returning a `Result`. The built-in names
are `orders.cancel`, `orders.complete` and `sql`; any other name of the form
`module:function` is imported (see `callables`).
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Engine

from expiryd.config import Config
from expiryd.errors import ConfigError
from expiryd.expiry import Expiry
from expiryd.outcomes import Result
from expiryd.routes import Route

Handler = Callable[[Expiry], Result]

BUILT_IN = ("orders.cancel", "orders.complete", "sql")


def build_handlers(config: Config, engine: Engine) -> dict[str, Handler]:
    """One handler per route name, each checked against the database it will use."""
    from expiryd.handlers import callables, orders, sql

    handlers: dict[str, Handler] = {}
    order_table: orders.OrderTable | None = None
    for number, route in enumerate(config.routes, 1):
        try:
            if route.handler in orders.HANDLERS:
                order_table = order_table or orders.OrderTable.reflect(config.orders, engine)
                handlers[route.name] = orders.build(route, order_table)
            elif route.handler == "sql":
                handlers[route.name] = sql.build(route, engine)
            elif ":" in route.handler:
                handlers[route.name] = callables.build(route)
            else:
                raise ConfigError(
                    f"unknown handler (known: {', '.join(BUILT_IN)}, or module:function)"
                )
        except ConfigError as exc:
            raise ConfigError(f"{config.source}: {_describe(number, route)}: {exc}") from None
    return handlers


def _describe(number: int, route: Route) -> str:
    return f"[[routes]] #{number} ({route.pattern.text!r} -> {route.handler!r})"

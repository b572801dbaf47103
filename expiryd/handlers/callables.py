"""module:function handlers: any importable callable.

The callable receives one `expiryd.Expiry` (key, route, fields, value, deadline) and returns
None or True (applied), False (skipped), or a count of rows changed (0 means skipped); what
it raises decides between a retry and a dead letter. A callable marked with
`expiryd.batch` receives the list of a group's expiries instead and returns one such value
per expiry, in order (an exception in that list is that expiry's outcome).

A callable with a parameter named `connection` is given expiryd's own database
connection, in a transaction that expiryd commits together with the inbox entries of
the expiries it settled: its statements take effect once even when the COMMIT's reply is
lost (see `expiryd.database.inbox`). The group then runs in that one transaction; if the
callable raises, it is rolled back and each expiry runs again in its own.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine

from expiryd.database.inbox import Inbox
from expiryd.errors import ConfigError
from expiryd.expiry import Expiry
from expiryd.handlers import one_by_one, run_one
from expiryd.handlers.transactional import Transactional
from expiryd.outcomes import Ending, Outcome, Result
from expiryd.routes import Route


@dataclass(frozen=True)
class CallableHandler:
    function: Callable[..., Any]

    def __call__(self, expiry: Expiry) -> Result:
        if is_batch(self.function):
            return run_one(self, expiry)
        return to_result(self.function(expiry))

    def run_many(self, expiries: Sequence[Expiry]) -> list[Ending]:
        if not is_batch(self.function):
            return one_by_one(self, expiries)
        return _results(self.function(list(expiries)), expiries)


@dataclass(frozen=True)
class ConnectionHandler(Transactional):
    """A callable that takes `connection`: its group's work and inbox entries commit
    together."""

    function: Callable[..., Any]
    engine: Engine
    inbox: Inbox | None

    def work(self, connection: Connection, expiries: list[Expiry]) -> list[Ending]:
        if not is_batch(self.function):
            return [to_result(self.function(e, connection=connection)) for e in expiries]
        endings = _results(self.function(expiries, connection=connection), expiries)
        failed = [e for e in endings if isinstance(e, BaseException)]
        if failed:  # its statements are in this transaction: roll back, each on its own
            raise failed[0]
        return endings


def _results(returned: Sequence[Any], expiries: Sequence[Expiry]) -> list[Ending]:
    returned = list(returned)
    if len(returned) != len(expiries):
        raise TypeError(f"batch handler returned {len(returned)} results for {len(expiries)}")
    return [r if isinstance(r, BaseException) else to_result(r) for r in returned]


def batch(function: Callable[[list[Expiry]], Sequence[Any]]) -> Callable[[list[Expiry]], Any]:
    """Mark a handler that takes a group's expiries at once and returns one value each."""
    function.expiryd_batch = True  # type: ignore[attr-defined]
    return function


def is_batch(function: Callable[..., Any]) -> bool:
    return bool(getattr(function, "expiryd_batch", False))


def to_result(returned: Any) -> Result:
    if returned is None or returned is True:
        return Result(Outcome.APPLIED)
    if returned is False:
        return Result(Outcome.SKIPPED)
    if isinstance(returned, int):
        return Result.from_rows(returned)
    raise TypeError(f"handler returned {type(returned).__name__}; expected None, bool or int")


def build(
    route: Route, engine: Engine, inbox: Callable[[], Inbox | None]
) -> CallableHandler | ConnectionHandler:
    """The route's callable; `inbox` opens the inbox, asked only when the callable takes a
    connection."""
    if route.options:
        raise ConfigError(f"unknown setting {sorted(route.options)[0]!r} for a callable handler")
    module_name, _, attribute = route.handler.partition(":")
    loaded = module_name in sys.modules
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ConfigError(f"cannot import {module_name!r}: {exc} (is it on PYTHONPATH?)") from None
    function = getattr(module, attribute, None)
    if not callable(function):
        hint = (
            " as this process already loaded it; a reload keeps loaded code: restart "
            "expiryd to load new code"
            if loaded
            else ""
        )
        raise ConfigError(f"{module_name!r} has no callable named {attribute!r}{hint}")
    if takes_connection(function):
        return ConnectionHandler(function, engine, inbox())
    return CallableHandler(function)


def takes_connection(function: Callable[..., Any]) -> bool:
    try:
        return "connection" in inspect.signature(function).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        return False

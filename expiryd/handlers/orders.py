"""orders.cancel and orders.complete: move orders between statuses, if they are still in
a `from` status. An order paid meanwhile is left alone and the expiry counts as skipped.

A group of expiries is one transaction of set-based statements: lock the orders that are
still in a `from` status, skipping those another transaction holds (a payment in
progress), change the locked ones, and find which of the rest are held. Those held are
`Busy`: tried again shortly without using up an attempt, while the others commit."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, Connection, Engine, Table, select, update

from expiryd import defaults
from expiryd.config import OrdersSettings, StatusChange
from expiryd.database.engine import reflect_table, skips_locked_rows
from expiryd.errors import ConfigError
from expiryd.expiry import Expiry
from expiryd.handlers import Outcome, one_by_one, run_one
from expiryd.outcomes import Outcome as Kind
from expiryd.outcomes import Result
from expiryd.retries import Busy
from expiryd.routes import Route

HANDLERS = ("orders.cancel", "orders.complete")


@dataclass(frozen=True)
class OrderTable:
    settings: OrdersSettings
    engine: Engine
    table: Table

    @classmethod
    def reflect(cls, settings: OrdersSettings, engine: Engine) -> OrderTable:
        try:
            table = reflect_table(engine, settings.table)
        except ConfigError as exc:
            raise ConfigError(f"[orders] table: {exc}") from None
        for setting in ("key_column", "status_column"):
            column = getattr(settings, setting)
            if column not in table.c:
                known = ", ".join(table.c.keys())
                raise ConfigError(
                    f"[orders] {setting}: {column!r} is not a column of table "
                    f"{settings.table!r} (it has: {known})"
                )
        return cls(settings, engine, table)

    @property
    def key_column(self) -> Column[Any]:
        return self.table.c[self.settings.key_column]

    @property
    def status_column(self) -> Column[Any]:
        return self.table.c[self.settings.status_column]


@dataclass(frozen=True)
class OrderTransition:
    engine: Engine
    table: Table
    key: Column[Any]
    status: Column[Any]
    sources: tuple[Any, ...]
    target: Any
    key_type: type | None
    skip_locked: bool
    """The server can skip rows other transactions hold (MariaDB >= 10.6, MySQL >= 8.0)."""

    def __call__(self, expiry: Expiry) -> Result:
        return run_one(self, expiry)

    def run_many(self, expiries: Sequence[Expiry]) -> list[Outcome]:
        numbers = [coerce(e.fields[defaults.ORDER_FIELD], self.key_type) for e in expiries]
        wanted = {number for number in numbers if number is not None}
        try:
            with self._connect() as connection, connection.begin():
                changed, held = self._change(connection, wanted) if wanted else (set(), set())
        except Exception:
            if len(expiries) == 1:
                raise
            # One order's trouble (a deadlock, a value the column refuses): each on its own.
            return one_by_one(self, expiries)
        return _outcomes(numbers, changed, held)

    def _connect(self) -> Connection:
        connection = self.engine.connect()
        if self.skip_locked:
            # READ COMMITTED: the UPDATE neither locks nor waits for rows it does not
            # change, such as an order a payment in progress holds.
            connection = connection.execution_options(isolation_level="READ COMMITTED")
        return connection

    def _change(self, connection: Connection, wanted: set[Any]) -> tuple[set[Any], set[Any]]:
        """Change every wanted order still in a `from` status; the orders changed, and
        those still in a `from` status that another transaction holds."""
        due = select(self.key).where(self.key.in_(wanted), self.status.in_(self.sources))
        locking = due.with_for_update(skip_locked=self.skip_locked)
        changed = set(connection.execute(locking).scalars())
        if changed:
            statement = (
                update(self.table)
                .where(self.key.in_(changed), self.status.in_(self.sources))
                .values({self.status: self.target})
            )
            connection.execute(statement)
        rest = wanted - changed
        if not (self.skip_locked and rest):
            return changed, set()
        held = set(connection.execute(due.where(self.key.in_(rest))).scalars())
        return changed, held


def _outcomes(numbers: list[Any], changed: set[Any], held: set[Any]) -> list[Outcome]:
    """One outcome per expiry; an order named twice in a group is changed by the first."""
    outcomes: list[Outcome] = []
    seen: set[Any] = set()
    for number in numbers:
        if number in held:
            outcomes.append(Busy("the order's row is locked by another transaction"))
        elif number in changed and number not in seen:
            outcomes.append(Result(Kind.APPLIED, 1))
        else:
            outcomes.append(Result(Kind.SKIPPED, 0))
        seen.add(number)
    return outcomes


def build(route: Route, orders: OrderTable) -> OrderTransition:
    if defaults.ORDER_FIELD not in route.pattern.fields:
        raise ConfigError(
            f"the pattern needs a {{{defaults.ORDER_FIELD}}} field, "
            f"e.g. 'order:cancel:{{{defaults.ORDER_FIELD}}}'"
        )
    action = route.handler.split(".", 1)[1]
    change: StatusChange = getattr(orders.settings, action)
    status_type = python_type(orders.status_column)
    sources = [_status(value, status_type, action, "from") for value in change.sources]
    target = _status(change.target, status_type, action, "to")
    transition = OrderTransition(
        engine=orders.engine,
        table=orders.table,
        key=orders.key_column,
        status=orders.status_column,
        sources=tuple(sources),
        target=target,
        key_type=python_type(orders.key_column),
        skip_locked=skips_locked_rows(orders.engine),
    )
    statement = update(orders.table).values({orders.status_column: target})
    statement.compile(dialect=orders.engine.dialect)  # fail at start, not at the first expiry
    return transition


def _status(value: int | str, kind: type | None, action: str, end: str) -> Any:
    converted = coerce(value, kind)
    if converted is None:
        raise ConfigError(f"[orders] {action}.{end}: {value!r} does not fit the status column")
    return converted


def python_type(column: Column[Any]) -> type | None:
    try:
        kind = column.type.python_type
    except NotImplementedError:
        return None
    return kind if kind in (int, str) else None


_DIGITS = re.compile(r"-?[0-9]{1,19}")
"""An integer as an order number is written: ASCII digits, no more than a BIGINT holds."""


def coerce(value: int | str, kind: type | None) -> Any:
    """The value in the column's own type, so '0' and 0 compare as the column expects;
    None when it cannot be (a non-numeric order number for an integer column). Only plain
    ASCII digits count as a number: not '٧', '1_000', '+7' or ' 7'."""
    if kind is int:
        if isinstance(value, int):
            return value
        return int(value) if _DIGITS.fullmatch(value) else None
    if kind is str:
        return str(value)
    return value

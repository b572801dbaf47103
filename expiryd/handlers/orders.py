"""orders.cancel and orders.complete: move orders between statuses, if they are still in
a `from` status. An order paid meanwhile is left alone and the expiry counts as skipped.

A group of expiries is one transaction of set-based statements: lock the orders that are
still in a `from` status, skipping those another transaction holds (a payment in
progress), change the locked ones, and find which of the rest are held. Those held are
`Busy`: tried again shortly without using up an attempt, while the others commit.

Keys are matched to rows as the database matches them: a key the changed rows do not
hold exactly (`sn5` for `SN5` under a case-insensitive collation, trailing spaces, a
DECIMAL column) is looked up by the database itself before it is called skipped."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, Connection, Engine, Table, literal, select, union_all, update

from expiryd import defaults
from expiryd.config import OrdersSettings, StatusChange
from expiryd.database.engine import reflect_table, skips_locked_rows
from expiryd.database.inbox import Inbox
from expiryd.errors import ConfigError
from expiryd.expiry import Expiry
from expiryd.handlers.transactional import Transactional
from expiryd.outcomes import Ending, Outcome, Result
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
class OrderTransition(Transactional):
    engine: Engine
    table: Table
    key: Column[Any]
    status: Column[Any]
    sources: tuple[Any, ...]
    target: Any
    key_type: type | None
    skip_locked: bool
    """The server can skip rows other transactions hold (MariaDB >= 10.6, MySQL >= 8.0)."""
    inbox: Inbox | None

    def work(self, connection: Connection, expiries: list[Expiry]) -> list[Ending]:
        numbers = [coerce(e.fields[defaults.ORDER_FIELD], self.key_type) for e in expiries]
        wanted = {number for number in numbers if number is not None}
        locked = self._change(connection, wanted) if wanted else set()
        unsure = {n for n in wanted if n not in locked}
        rows = self._rows_matching(connection, unsure) if unsure else {}
        return _outcomes(numbers, locked, rows)

    def _change(self, connection: Connection, wanted: set[Any]) -> set[Any]:
        """Lock and change every wanted order still in a `from` status, skipping those
        another transaction holds; the keys of the rows changed, as the database holds
        them (`sn5` may have changed `SN5`)."""
        due = select(self.key).where(self.key.in_(wanted), self.status.in_(self.sources))
        locking = due.with_for_update(skip_locked=self.skip_locked)
        locked = set(connection.execute(locking).scalars())
        if locked:
            statement = (
                update(self.table)
                .where(self.key.in_(locked), self.status.in_(self.sources))
                .values({self.status: self.target})
            )
            connection.execute(statement)
        return locked

    def _rows_matching(self, connection: Connection, numbers: set[Any]) -> dict[Any, list[Row]]:
        """For each number not found as such among the changed keys, the rows the
        database matches to it (its collation decides: case, trailing spaces, DECIMAL),
        each with whether it is still in a `from` status."""
        ordered = list(numbers)
        found: dict[Any, list[Row]] = {n: [] for n in ordered}
        for start in range(0, len(ordered), MATCH_CHUNK):
            chunk = ordered[start : start + MATCH_CHUNK]
            lookups = [
                select(literal(start + i), self.key, self.status.in_(self.sources)).where(
                    self.key == number
                )
                for i, number in enumerate(chunk)
            ]
            query = lookups[0] if len(lookups) == 1 else union_all(*lookups)
            for index, key, due in connection.execute(query):
                found[ordered[index]].append(Row(key, bool(due)))
        return found


MATCH_CHUNK = 400
"""Lookups per UNION ALL statement (SQLite allows 500 terms)."""


@dataclass(frozen=True)
class Row:
    key: Any
    due: bool
    """Still in a `from` status after this transaction's change: another holds it."""


def _outcomes(numbers: list[Any], locked: set[Any], unsure: dict[Any, list[Row]]) -> list[Ending]:
    """One outcome per expiry: applied if a row it names was changed and not yet credited
    to an earlier expiry of the group (an order named twice is changed once), Busy if a
    row it names is held by another transaction, else skipped."""
    outcomes: list[Ending] = []
    credited: set[Any] = set()
    for number in numbers:
        rows = [Row(number, False)] if number in locked else unsure.get(number, [])
        mine = [row.key for row in rows if row.key in locked and row.key not in credited]
        if mine:
            credited.add(mine[0])
            outcomes.append(Result(Outcome.APPLIED, 1))
        elif any(row.due and row.key not in locked for row in rows):
            outcomes.append(Busy("the order's row is locked by another transaction"))
        else:
            outcomes.append(Result(Outcome.SKIPPED, 0))
    return outcomes


def build(route: Route, orders: OrderTable, inbox: Inbox | None) -> OrderTransition:
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
    skip_locked = skips_locked_rows(orders.engine)
    transition = OrderTransition(
        # READ COMMITTED: the UPDATE neither locks nor waits for rows it does not change,
        # such as an order a payment in progress holds.
        engine=orders.engine.execution_options(isolation_level="READ COMMITTED")
        if skip_locked
        else orders.engine,
        table=orders.table,
        key=orders.key_column,
        status=orders.status_column,
        sources=tuple(sources),
        target=target,
        key_type=python_type(orders.key_column),
        skip_locked=skip_locked,
        inbox=inbox,
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

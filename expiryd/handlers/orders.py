"""orders.cancel and orders.complete: move one order between statuses, if it is still in
a `from` status. An order paid meanwhile is left alone and the expiry counts as skipped."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, Engine, Table, bindparam, update
from sqlalchemy.sql.dml import Update

from expiryd import defaults
from expiryd.config import OrdersSettings, StatusChange
from expiryd.db import reflect_table
from expiryd.errors import ConfigError
from expiryd.expiry import Expiry
from expiryd.outcomes import Outcome, Result
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
    statement: Update
    key_type: type | None

    def __call__(self, expiry: Expiry) -> Result:
        order_sn = coerce(expiry.fields[defaults.ORDER_FIELD], self.key_type)
        if order_sn is None:
            return Result(Outcome.SKIPPED, 0)
        with self.engine.begin() as connection:
            rows = connection.execute(self.statement, {"expiry_order_sn": order_sn}).rowcount
        return Result.from_rows(rows)


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
    statement = (
        update(orders.table)
        .where(orders.key_column == bindparam("expiry_order_sn"), orders.status_column.in_(sources))
        .values({orders.status_column: target})
    )
    statement.compile(dialect=orders.engine.dialect)  # fail at start, not at the first expiry
    return OrderTransition(orders.engine, statement, python_type(orders.key_column))


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

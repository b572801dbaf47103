"""Callable handlers that take expiryd's `connection`: their statements commit with the
inbox entries."""

from __future__ import annotations

from sqlalchemy import Connection, text

import expiryd
from expiryd import Expiry

BUMP = text("UPDATE counters SET n = n + 1 WHERE id = :id")


def bump(expiry: Expiry, connection: Connection) -> int:
    return connection.execute(BUMP, {"id": expiry.fields["id"]}).rowcount


@expiryd.batch
def bump_all(expiries: list[Expiry], connection: Connection) -> list[int]:
    return [connection.execute(BUMP, {"id": e.fields["id"]}).rowcount for e in expiries]


@expiryd.batch
def bump_all_failing_odd(expiries: list[Expiry], connection: Connection) -> list[object]:
    """Bumps every counter, then says the odd ones failed: their bumps must not stay."""
    for e in expiries:
        connection.execute(BUMP, {"id": e.fields["id"]})
    return [expiryd.Retry("odd") if int(e.fields["id"]) % 2 else True for e in expiries]

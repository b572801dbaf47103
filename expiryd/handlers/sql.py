"""sql: any parameterised statement; the pattern's fields are its bind parameters.

A group of expiries runs in one transaction, with their inbox entries; if one statement
fails, the transaction is rolled back and each expiry runs in its own, so only that one
fails. A commit whose reply is lost is retried, and the retry skips what the inbox shows
committed, so even `SET n = n + 1` takes effect once."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, Engine, TextClause, text
from sqlalchemy.exc import ArgumentError

from expiryd.database.inbox import Inbox
from expiryd.errors import ConfigError
from expiryd.expiry import Expiry
from expiryd.handlers.transactional import Transactional
from expiryd.outcomes import Ending, Result
from expiryd.routes import Route


@dataclass(frozen=True)
class SqlStatement(Transactional):
    engine: Engine
    statement: TextClause
    params: tuple[str, ...]
    inbox: Inbox | None

    def work(self, connection: Connection, expiries: list[Expiry]) -> list[Ending]:
        counts = [connection.execute(self.statement, self._values(e)).rowcount for e in expiries]
        return [Result.from_rows(rows if rows >= 0 else None) for rows in counts]

    def _values(self, expiry: Expiry) -> dict[str, str]:
        return {name: expiry.fields[name] for name in self.params}


def build(route: Route, engine: Engine, inbox: Inbox | None) -> SqlStatement:
    sql = route.options.get("sql")
    if not isinstance(sql, str) or not sql.strip():
        raise ConfigError('needs sql = "UPDATE ... WHERE id = :field"')
    unknown = set(route.options) - {"sql"}
    if unknown:
        raise ConfigError(f"unknown setting {sorted(unknown)[0]!r} for handler 'sql'")
    try:
        statement = text(sql)
        params = tuple(statement.compile().params)
    except ArgumentError as exc:
        raise ConfigError(f"sql: {exc}") from None
    missing = [name for name in params if name not in route.pattern.fields]
    if missing:
        raise ConfigError(
            f"sql uses :{missing[0]}, which the pattern does not capture "
            f"(fields: {', '.join(route.pattern.fields) or 'none'})"
        )
    return SqlStatement(engine, statement, params, inbox)

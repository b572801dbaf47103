"""The inbox: a table of expiryd's own, in the shop's database, holding the id of every
expiry whose handler's work committed, written in the same transaction as that work.

A COMMIT whose reply is lost (a proxy dropping the connection, a read timeout on a slow
commit) may have committed or not. The retry that follows looks its ids up first: those
found were committed by the earlier attempt and are not run again, and say so. Each id
is unique, so two attempts of one expiry racing each other cannot both commit, and an
expiry on its first run is not looked up at all: should an earlier attempt have
committed after all, the new one's entry fails the INSERT just the same.

Ids are kept for `defaults.INBOX_KEEP_SECONDS`, far longer than any retry waits, and
then pruned, a chunk at a time, by whichever worker comes by.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Dialect,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    delete,
    inspect,
    select,
)
from sqlalchemy.dialects.mysql import VARCHAR
from sqlalchemy.schema import CreateIndex, CreateTable, ExecutableDDLElement

from expiryd import defaults
from expiryd.errors import ConfigError
from expiryd.liveness import beat_here
from expiryd.logs import describe_error
from expiryd.outcomes import Outcome, Result

ID_CHUNK = 1000
"""Ids per lookup or insert."""

_PLACEHOLDERS = {"qmark": "?", "format": "%s", "pyformat": "%s"}
"""A positional parameter, by the driver's paramstyle (PyMySQL's is pyformat, SQLite's
qmark)."""

ID_TYPE = String(64).with_variant(VARCHAR(64, charset="ascii", collation="ascii_bin"), "mysql")
"""Compared byte for byte whatever the database's default collation: ids that differ in
case are different expiries."""


@dataclass(frozen=True)
class Entry:
    """What the inbox says of one expiry: the attempt that committed it, with its result."""

    attempt: int
    result: Result

    def as_result(self) -> Result:
        """The result again, saying which attempt committed it."""
        return Result(self.result.outcome, self.result.rows, committed_by_attempt=self.attempt)


def table_for(name: str) -> Table:
    table = Table(
        name,
        MetaData(),
        Column("expiry_id", ID_TYPE, primary_key=True),
        Column("outcome", String(16), nullable=False),
        Column("row_count", Integer, nullable=True),
        Column("attempt", Integer, nullable=False),
        Column("applied_at_ms", BigInteger, nullable=False),
    )
    Index(f"{name[:48]}_applied_at", table.c.applied_at_ms)  # within MySQL's 64 characters
    return table


def _insert_head(table: Table, dialect: Dialect) -> str:
    """`INSERT INTO <table> (<its columns>) VALUES `, quoted for the dialect."""
    quote = dialect.identifier_preparer
    columns = ", ".join(quote.format_column(column) for column in table.c)
    return f"INSERT INTO {quote.format_table(table)} ({columns}) VALUES "


def _values(entries: Sequence[tuple[str, int, Result]], placeholder: str, now_ms: int) -> str:
    """The rows of `entries`, each id a bound parameter and the rest literals: they are
    expiryd's own outcome names and integers, and a group's entries are nearly all alike,
    so each distinct row is written once where binding would escape four values a row."""
    written: dict[tuple[Outcome, int | None, int], str] = {}
    rows = []
    for _, attempt, result in entries:
        entry = (result.outcome, result.rows, attempt)
        row = written.get(entry)
        if row is None:
            row = written[entry] = _row(placeholder, *entry, now_ms)
        rows.append(row)
    return ", ".join(rows)


def _row(placeholder: str, outcome: Outcome, rows: int | None, attempt: int, now_ms: int) -> str:
    """One row, its values in the order of `table_for`'s columns."""
    count = "NULL" if rows is None else int(rows)
    return f"({placeholder}, '{Outcome(outcome).value}', {count}, {int(attempt)}, {int(now_ms)})"


def ddl(name: str, engine: Engine) -> str:
    """The statements that create the table, in the engine's dialect, one line each."""
    table = table_for(name)
    statements: list[ExecutableDDLElement] = [CreateTable(table)]
    statements += [CreateIndex(index) for index in table.indexes]
    return " ".join(
        " ".join(str(s.compile(dialect=engine.dialect)).split()) + ";" for s in statements
    )


def exists(engine: Engine, name: str) -> bool:
    return inspect(engine).has_table(name)


def how_to_create(name: str, engine: Engine) -> str:
    return (
        f"create it once as an administrator with `expiryd init-db`, or: {ddl(name, engine)} "
        "(or set [database] inbox = false, and a commit whose reply is lost runs its "
        "expiries again)"
    )


def create_table(engine: Engine, name: str) -> bool:
    """Create the inbox table; False when it already exists."""
    if exists(engine, name):
        return False
    table_for(name).create(engine, checkfirst=True)
    return True


@dataclass
class Inbox:
    table: Table
    keep_ms: int = defaults.INBOX_KEEP_SECONDS * 1000
    _pruned_at: float = field(default=0.0, init=False, repr=False)
    _pruning: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @classmethod
    def open(cls, engine: Engine, name: str) -> Inbox:
        """The inbox table `name`, created when missing; a ConfigError that gives the
        DDL when it cannot be."""
        if engine.dialect.paramstyle not in _PLACEHOLDERS:
            raise ConfigError(
                "[database] url: the inbox needs a driver that takes positional "
                f"parameters, and this one's paramstyle is {engine.dialect.paramstyle!r}: "
                "use another driver, or set [database] inbox = false"
            )
        try:
            create_table(engine, name)
        except Exception as exc:  # no CREATE privilege, most often
            if exists(engine, name):  # another process created it at the same moment
                return cls(table_for(name))
            raise ConfigError(
                f"[database] inbox_table {name!r}: cannot create it ({describe_error(exc)}); "
                f"{how_to_create(name, engine)}"
            ) from None
        return cls(table_for(name))

    def look_up(self, connection: Connection, ids: Sequence[str]) -> dict[str, Entry]:
        """The ids among `ids` that the inbox holds."""
        c = self.table.c
        found: dict[str, Entry] = {}
        for start in range(0, len(ids), ID_CHUNK):
            chunk = ids[start : start + ID_CHUNK]
            query = select(c.expiry_id, c.outcome, c.row_count, c.attempt).where(
                c.expiry_id.in_(chunk)
            )
            for expiry_id, outcome, rows, attempt in connection.execute(query):
                found[expiry_id] = Entry(attempt, Result(Outcome(outcome), rows))
        return found

    def record(self, connection: Connection, done: Sequence[tuple[str, int, Result]]) -> None:
        """Add (id, attempt, result) of each expiry whose work this transaction commits,
        one INSERT of many rows a chunk. The statement is written here, not by
        SQLAlchemy: binding five parameters a row cost the daemon more than the orders'
        own statements did (see `_values`)."""
        head = _insert_head(self.table, connection.dialect)
        placeholder = _PLACEHOLDERS[connection.dialect.paramstyle]
        now_ms = int(time.time() * 1000)
        for start in range(0, len(done), ID_CHUNK):
            chunk = done[start : start + ID_CHUNK]
            rows = _values(chunk, placeholder, now_ms)
            connection.exec_driver_sql(head + rows, tuple([expiry_id for expiry_id, _, _ in chunk]))

    def prune_if_due(self, engine: Engine) -> int:
        """Delete ids past their keeping time, at most once a `defaults.INBOX_PRUNE_SECONDS`
        per process; the number deleted."""
        now = time.monotonic()
        if now - self._pruned_at < defaults.INBOX_PRUNE_SECONDS:
            return 0
        if not self._pruning.acquire(blocking=False):
            return 0
        try:
            self._pruned_at = now
            return self.prune(engine)
        finally:
            self._pruning.release()

    def prune(self, engine: Engine, now_ms: int | None = None) -> int:
        c = self.table.c
        cutoff = (now_ms or int(time.time() * 1000)) - self.keep_ms
        old = select(c.expiry_id).where(c.applied_at_ms < cutoff).limit(ID_CHUNK)
        deleted = 0
        for _ in range(defaults.INBOX_PRUNE_CHUNKS):
            beat_here()
            with engine.begin() as connection:
                ids = list(connection.execute(old).scalars())
                if ids:
                    connection.execute(delete(self.table).where(c.expiry_id.in_(ids)))
            deleted += len(ids)
            if len(ids) < ID_CHUNK:
                break
        return deleted

"""A COMMIT that fails: unknown only when its reply was lost. (Lost replies, through a
proxy in front of MariaDB, are in test_inbox.py.)"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.exc import OperationalError
from structlog.testing import capture_logs

from expiryd.database.transaction import run_in_transaction
from expiryd.expiry import Expiry
from expiryd.outcomes import Ending, Outcome, Result


def bump(connection: Connection, expiries: list[Expiry]) -> list[Ending]:
    connection.execute(text("UPDATE t SET n = n + 1"))
    return [Result(Outcome.APPLIED, 1) for _ in expiries]


def test_a_commit_the_database_refuses_is_a_failure_not_an_unknown_fate(
    tmp_path: Path,
) -> None:
    """SQLite cannot commit while another connection reads: "database is locked", an
    answer, so nothing was committed and the usual retry rules apply."""
    path = tmp_path / "t.sqlite3"
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.1})
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE t (n INTEGER)"))
        connection.execute(text("INSERT INTO t VALUES (0)"))
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT n FROM t").fetchall()  # holds its shared lock

    with capture_logs() as logs, pytest.raises(OperationalError, match="locked"):
        run_in_transaction(engine, None, [Expiry(key="k", route="r", id="1")], bump)
    reader.execute("ROLLBACK")

    assert [x for x in logs if x["event"] == "commit.unknown"] == []
    assert reader.execute("SELECT n FROM t").fetchall() == [(0,)]
    reader.close()
    engine.dispose()

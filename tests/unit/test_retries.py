import sqlite3
import tomllib

import pymysql
import pytest
from sqlalchemy import exc as sa

from expiryd import Permanent, Retry, config
from expiryd.errors import ConfigError
from expiryd.retries import RetryPolicy, Verdict, classify


def mysql_error(kind: type[sa.DBAPIError], code: int, message: str) -> sa.DBAPIError:
    return kind("UPDATE orders ...", {}, pymysql.err.OperationalError(code, message))


@pytest.mark.parametrize(
    ("error", "verdict"),
    [
        (Retry("later"), Verdict.RETRY),
        (Permanent("never"), Verdict.DEAD),
        (ConnectionRefusedError(), Verdict.RETRY),
        (TimeoutError(), Verdict.RETRY),
        (RuntimeError("unknown"), Verdict.RETRY),
        (KeyError("field"), Verdict.DEAD),
        (mysql_error(sa.OperationalError, 2003, "Can't connect"), Verdict.RETRY),
        (mysql_error(sa.OperationalError, 2006, "gone away"), Verdict.RETRY),
        (mysql_error(sa.OperationalError, 1213, "Deadlock found"), Verdict.RETRY),
        (mysql_error(sa.OperationalError, 1205, "Lock wait timeout"), Verdict.RETRY),
        (mysql_error(sa.OperationalError, 1054, "Unknown column 'x'"), Verdict.DEAD),
        (mysql_error(sa.ProgrammingError, 1146, "Table doesn't exist"), Verdict.DEAD),
        (mysql_error(sa.IntegrityError, 1062, "Duplicate entry"), Verdict.DEAD),
        (mysql_error(sa.OperationalError, 1290, "--read-only option"), Verdict.RETRY),
        (mysql_error(sa.OperationalError, 1047, "WSREP not ready"), Verdict.RETRY),
        (mysql_error(sa.OperationalError, 1159, "net read timeout"), Verdict.RETRY),
        (mysql_error(sa.OperationalError, 1969, "max_statement_time exceeded"), Verdict.RETRY),
        (mysql_error(sa.OperationalError, 3024, "max_execution_time exceeded"), Verdict.RETRY),
        (SystemExit(3), Verdict.RETRY),
    ],
)
def test_failures_that_may_pass_are_retried(error: BaseException, verdict: Verdict) -> None:
    assert classify(error) is verdict


def sqlite_error(sql: str, database: str = ":memory:", timeout: float = 5) -> sa.DBAPIError:
    """The error real SQLite raises for `sql`, wrapped as SQLAlchemy wraps it."""
    connection = sqlite3.connect(database, timeout=timeout)
    try:
        connection.execute(sql)
    except sqlite3.Error as exc:
        return sa.DBAPIError.instance(sql, {}, exc, sqlite3.Error)
    finally:
        connection.close()
    raise AssertionError(f"{sql!r} did not fail")


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE nowhere SET a = 1",
        "SELECT nope FROM sqlite_master",
        "UPDAT orders SET status = 3",
        "SELECT * FROM",
    ],
)
def test_sqlite_statements_that_can_never_run_are_dead_lettered(sql: str) -> None:
    assert classify(sqlite_error(sql)) is Verdict.DEAD


def test_a_locked_sqlite_database_is_retried(tmp_path: object) -> None:
    path = f"{tmp_path}/locked.sqlite3"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (a INTEGER)")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        error = sqlite_error("INSERT INTO t VALUES (1)", path, timeout=0)
    finally:
        holder.close()
    assert "locked" in str(error.orig)
    assert classify(error) is Verdict.RETRY


def test_retry_delays_grow_to_the_cap() -> None:
    policy = RetryPolicy(base_seconds=1, cap_seconds=300, attempts=10)
    assert 0.5 <= policy.delay(1) <= 1
    assert 128 <= policy.delay(9) <= 256
    assert 150 <= policy.delay(20) <= 300


def test_retry_policy_defaults_and_per_route_overrides() -> None:
    loaded = config.parse(
        tomllib.loads(
            "[retry]\nattempts = 5\n"
            '[[routes]]\npattern = "a:{x}"\nhandler = "sql"\nsql = "SELECT 1"\n'
            "retry = { attempts = 2, base_seconds = 0.5 }\n"
            '[[routes]]\npattern = "b:{x}"\nhandler = "sql"\nsql = "SELECT 1"\n'
        ),
        "shop.toml",
        {},
    )
    assert loaded.routes[0].retry == RetryPolicy(base_seconds=0.5, cap_seconds=300, attempts=2)
    assert loaded.routes[1].retry == RetryPolicy(base_seconds=1, cap_seconds=300, attempts=5)
    assert "sql" in loaded.routes[0].options and "retry" not in loaded.routes[0].options


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[retry]\nattempts = 0\n", r"\[retry\] attempts: must be a number more than 0"),
        ("[retry]\nbase_seconds = 10\ncap_seconds = 5\n", "must not be less than base"),
        ("[worker]\nlease_seconds = -1\n", r"\[worker\] lease_seconds: must be a number more"),
        ("[retry]\nbase_seconds = inf\n", r"\[retry\] base_seconds: must be a number more"),
        ("[retry]\ncap_seconds = nan\n", r"\[retry\] cap_seconds: must be a number more"),
        ("[worker]\nbatch_size = 100000\n", r"\[worker\] batch_size: must be at most 10000"),
        (
            '[[routes]]\npattern = "a"\nhandler = "sql"\nretry = { tries = 3 }\n',
            r"\[\[routes\]\] #1 retry tries: unknown setting",
        ),
    ],
)
def test_retry_and_worker_config_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config.parse(tomllib.loads(text), "shop.toml", {})

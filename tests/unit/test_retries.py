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
        (sa.OperationalError("x", {}, Exception("database is locked")), Verdict.RETRY),
        (sa.ProgrammingError("x", {}, Exception("no such column")), Verdict.DEAD),
    ],
)
def test_failures_that_may_pass_are_retried(error: BaseException, verdict: Verdict) -> None:
    assert classify(error) is verdict


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
        ("[retry]\nattempts = 0\n", r"\[retry\] attempts: must be more than 0"),
        ("[retry]\nbase_seconds = 10\ncap_seconds = 5\n", "must not be less than base"),
        ("[worker]\nlease_seconds = -1\n", r"\[worker\] lease_seconds: must be more than 0"),
        (
            '[[routes]]\npattern = "a"\nhandler = "sql"\nretry = { tries = 3 }\n',
            r"\[\[routes\]\] #1 retry tries: unknown setting",
        ),
    ],
)
def test_retry_and_worker_config_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config.parse(tomllib.loads(text), "shop.toml", {})

"""What to do when a handler fails: try again later, or give up and dead-letter it."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sqlalchemy import exc as sa

from expiryd import defaults
from expiryd.backoff import backoff_delay


class Retry(Exception):
    """Raise from a custom handler for a failure that may pass: the expiry is tried again."""


class Busy(Retry):
    """Tried again shortly, without using up an attempt: what the expiry changes is held
    by someone else for now (an order's row locked by the shop's own transaction), or
    whether its work committed is for the inbox to tell (a COMMIT's reply lost)."""


class Permanent(Exception):
    """Raise from a custom handler for a failure that will not pass: it is dead-lettered."""


class Verdict(enum.Enum):
    RETRY = "retry"
    DEAD = "dead"


# MySQL and MariaDB errors that a later attempt can get past.
TRANSIENT_MYSQL_ERRORS = frozenset(
    {
        1040,  # too many connections
        1047,  # unknown command: a Galera node not ready during a failover
        1053,  # server shutdown in progress
        1158,  # error reading from the network
        1159,  # timeout reading from the network
        1160,  # error writing to the network
        1161,  # timeout writing to the network
        1205,  # lock wait timeout
        1213,  # deadlock
        1290,  # --read-only: a primary demoted, or a replica not yet promoted
        1317,  # query interrupted
        1927,  # connection killed
        1969,  # MariaDB max_statement_time exceeded
        2002,  # can't connect through socket
        2003,  # can't connect
        2006,  # server has gone away
        2013,  # lost connection during query
        2055,  # lost connection at reading
        3024,  # MySQL max_execution_time exceeded
    }
)

SQLITE_PERMANENT = (
    "no such table",
    "no such column",
    "no such function",
    "syntax error",
    "near ",
    "incomplete input",
    "table ",  # ... has no column named ...
)
"""How SQLite's OperationalError begins for a statement that will never succeed; its
other operational errors (a locked database, a full disk) may pass."""


@dataclass(frozen=True)
class RetryPolicy:
    base_seconds: float = defaults.RETRY_BASE_SECONDS
    cap_seconds: float = defaults.RETRY_CAP_SECONDS
    attempts: int = defaults.RETRY_ATTEMPTS

    def delay(self, attempt: int) -> float:
        """Seconds before attempt `attempt + 1`."""
        return backoff_delay(attempt, self.base_seconds, self.cap_seconds)


def classify(error: BaseException) -> Verdict:
    """Whether a failure may pass. Unknown errors are retried: a retry costs little, a
    dead letter needs a person."""
    if isinstance(error, Permanent):
        return Verdict.DEAD
    if isinstance(error, Retry | ConnectionError | TimeoutError):
        return Verdict.RETRY
    if isinstance(error, sa.DBAPIError):
        return _classify_database_error(error)
    if isinstance(error, sa.DisconnectionError | sa.TimeoutError):
        return Verdict.RETRY
    if isinstance(error, sa.SQLAlchemyError | LookupError | TypeError | ValueError):
        return Verdict.DEAD
    return Verdict.RETRY


def _classify_database_error(error: sa.DBAPIError) -> Verdict:
    if error.connection_invalidated:
        return Verdict.RETRY
    code = error.orig.args[0] if error.orig is not None and error.orig.args else None
    if isinstance(code, int):
        return Verdict.RETRY if code in TRANSIENT_MYSQL_ERRORS else Verdict.DEAD
    if isinstance(error, sa.OperationalError):
        message = str(error.orig).lower()
        return Verdict.DEAD if message.startswith(SQLITE_PERMANENT) else Verdict.RETRY
    return Verdict.DEAD

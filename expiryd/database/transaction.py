"""One transaction for a group of expiries: the handler's work, and the inbox entries of
what it settled, committed together.

A failure before the COMMIT, or a COMMIT the server refused, rolled everything back: the
caller may run each expiry again on its own. A COMMIT whose connection was lost before
its reply came leaves its fate unknown: it is logged as `commit.unknown` and raised as
`CommitUnknown`, a retry, never run again at once; the retry finds in the inbox what
did commit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError

from expiryd.database.inbox import Inbox
from expiryd.expiry import Expiry
from expiryd.logs import describe_error, get_logger
from expiryd.outcomes import Ending, Result
from expiryd.retries import Busy

Work = Callable[[Connection, list[Expiry]], list[Ending]]
"""A handler's work on a connection in a transaction: one outcome per expiry, in order."""


class CommitUnknown(Busy):
    """The COMMIT was sent and its reply never came: the work may have committed."""


def run_in_transaction(
    engine: Engine, inbox: Inbox | None, expiries: Sequence[Expiry], work: Work
) -> list[Ending]:
    """Run `work` on the expiries the inbox does not hold yet and commit it with their
    inbox entries; those it holds get the result their committed attempt had (only
    expiries not on their first run are looked up). Raises what `work` raised (nothing
    committed), `CommittedMeanwhile`, or `CommitUnknown`."""
    connection = engine.connect()
    try:
        transaction = connection.begin()
        try:
            done = inbox.look_up(connection, _ids(expiries)) if inbox else {}
            todo = [e for e in expiries if e.id not in done]
            outcomes = work(connection, todo) if todo else []
            if inbox:
                _record(inbox, connection, _settled(todo, outcomes))
        except BaseException:
            transaction.rollback()
            raise
        try:
            transaction.commit()
        except Exception as exc:
            # Its state is doubtful (SQLite keeps its locks after a refused COMMIT): the
            # connection is closed, not handed back to a pool.
            _invalidate(connection)
            if not _reply_lost(exc):
                raise  # the server answered: it did not commit, a failure like any other
            raise _unknown(expiries, inbox, exc) from exc
    finally:
        _close(connection)
    if inbox:
        _prune(engine, inbox)
    ran = iter(outcomes)
    return [done[e.id].as_result() if e.id in done else next(ran) for e in expiries]


def _ids(expiries: Sequence[Expiry]) -> list[str]:
    """The ids an earlier attempt may have committed. An expiry on its first run is not
    looked up; should one have committed after all (a dead letter replayed after its
    worker died past the COMMIT: a replay starts the job afresh), its inbox entry fails
    the INSERT, and the group is rolled back as `CommittedMeanwhile`."""
    return [e.id for e in expiries if e.id and not e.first_run]


def _settled(todo: list[Expiry], outcomes: list[Ending]) -> list[tuple[str, int, Result]]:
    """The inbox entries: every expiry with an id whose work ended in a result."""
    return [
        (e.id, e.attempt, outcome)
        for e, outcome in zip(todo, outcomes, strict=True)
        if e.id and isinstance(outcome, Result)
    ]


def _unknown(expiries: Sequence[Expiry], inbox: Inbox | None, exc: Exception) -> CommitUnknown:
    error = describe_error(exc)
    get_logger().warning(
        "commit.unknown",
        route=expiries[0].route,
        expiries=len(expiries),
        error=error,
        inbox=inbox is not None,
        then="retried, skipping what the inbox shows committed"
        if inbox
        else "retried; without the inbox, what did commit runs again",
    )
    return CommitUnknown(f"the COMMIT's reply was lost, so it may have committed: {error}")


def _reply_lost(exc: Exception) -> bool:
    """Whether a failed COMMIT's fate is unknown: the connection went (a proxy dropped
    it, the driver's read timed out) before its reply came. An error the server sent
    back (a lock, a certification failure) means nothing was committed."""
    if isinstance(exc, DBAPIError):
        return exc.connection_invalidated
    return isinstance(exc, OSError)


class CommittedMeanwhile(Busy):
    """Another attempt of an expiry (its lease lapsed under a worker that lives on)
    committed while this one ran: rolled back, and the retry finds it in the inbox."""


def _record(inbox: Inbox, connection: Connection, done: list[tuple[str, int, Result]]) -> None:
    try:
        inbox.record(connection, done)
    except IntegrityError as exc:
        raise CommittedMeanwhile(
            f"another attempt committed one of these expiries meanwhile: {describe_error(exc)}"
        ) from exc


def _invalidate(connection: Connection) -> None:
    try:
        connection.invalidate()
    except Exception as exc:
        get_logger().debug("connection.invalidate_failed", error=describe_error(exc))


def _close(connection: Connection) -> None:
    """Return the connection. Once the transaction has ended, nothing that fails here
    (the dialect resetting the isolation level on a lost connection) changes its fate."""
    try:
        connection.close()
    except Exception as exc:
        get_logger().debug("connection.close_failed", error=describe_error(exc))


def _prune(engine: Engine, inbox: Inbox) -> None:
    """Prune the inbox if due: after the commit, so a failure here is only logged."""
    try:
        inbox.prune_if_due(engine)
    except Exception as exc:
        get_logger().warning("inbox.prune_failed", error=describe_error(exc))

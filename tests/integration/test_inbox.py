"""The inbox and keys matched as the database matches them, against real databases: a
COMMIT whose reply a proxy drops after the server committed, a row another transaction
holds, a case-insensitive key column."""

from __future__ import annotations

import threading
import tomllib
from collections.abc import Iterator, Sequence

import pytest
import redis
from sqlalchemy import Engine, create_engine, event, make_url, select, text
from structlog.testing import capture_logs

from expiryd import config
from expiryd.database.engine import make_engine
from expiryd.database.inbox import Entry, Inbox, exists
from expiryd.database.transaction import CommittedMeanwhile, CommitUnknown
from expiryd.errors import ConfigError
from expiryd.expiry import Expiry
from expiryd.handlers import Handler, build_handlers
from expiryd.outcomes import Ending, Outcome, Result
from expiryd.retries import Busy
from expiryd.routes import match_route
from tests.support.proxy import FaultProxy
from tests.support.servers import MariaDB
from tests.support.shop import ORDER_ROUTES, create_orders, execute, rows, statuses

BUMP = """
[[routes]]
pattern = "bump:{id}"
handler = "sql"
sql = "UPDATE counters SET n = n + 1 WHERE id = :id"
"""


@pytest.fixture
def proxy(mariadb: MariaDB) -> Iterator[FaultProxy]:
    with FaultProxy(mariadb) as proxy:
        yield proxy


def through(proxy: FaultProxy, url: str) -> str:
    database = make_url(url).database
    assert database
    return proxy.url(database)


def load(url: str, toml: str, database: str = "") -> config.Config:
    return config.parse(tomllib.loads(database + toml), "shop.toml", {"EXPIRYD_DATABASE_URL": url})


def handler_for(url: str, toml: str, database: str = "") -> tuple[config.Config, Handler]:
    loaded = load(url, toml, database)
    handlers = build_handlers(loaded, make_engine(loaded.database), redis.Redis())
    return loaded, handlers[loaded.routes[0].name]


def expiries(
    loaded: config.Config, keys: Sequence[str], attempt: int = 1, first_run: bool = False
) -> list[Expiry]:
    found = [match_route(loaded.routes, key) for key in keys]
    return [
        Expiry(key, m.route.name, m.fields, id=f"id-{key}", attempt=attempt, first_run=first_run)
        for key, m in zip(keys, found, strict=True)
        if m is not None
    ]


def create_counters(url: str, count: int) -> None:
    execute(url, "CREATE TABLE counters (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
    execute(url, "INSERT INTO counters VALUES " + ", ".join(f"({i}, 0)" for i in range(count)))


def counts(url: str) -> list[object]:
    return [n for (n,) in rows(url, "SELECT n FROM counters ORDER BY id")]


def results(outcomes: list[Ending]) -> list[Result]:
    assert all(isinstance(o, Result) for o in outcomes), outcomes
    return outcomes  # type: ignore[return-value]


@pytest.mark.mysql
def test_a_lost_commit_reply_runs_no_statement_twice(mysql_url: str, proxy: FaultProxy) -> None:
    create_counters(mysql_url, 20)
    loaded, bump = handler_for(through(proxy, mysql_url), BUMP)
    group = expiries(loaded, [f"bump:{i}" for i in range(20)])
    proxy.drop_commit_replies(1)

    with capture_logs() as logs:
        first = bump.run_many(group)
    assert proxy.dropped == 1
    assert all(isinstance(o, CommitUnknown) for o in first), first
    assert counts(mysql_url) == [1] * 20  # it did commit, once
    (warning,) = [line for line in logs if line["event"] == "commit.unknown"]
    assert warning["log_level"] == "warning"
    assert warning["expiries"] == 20 and warning["inbox"] is True
    assert "Lost connection" in warning["error"]

    retried = results(bump.run_many(expiries(loaded, [e.key for e in group], attempt=2)))
    assert retried == [Result(Outcome.APPLIED, 1, committed_by_attempt=1)] * 20
    assert counts(mysql_url) == [1] * 20


@pytest.mark.mysql
@pytest.mark.parametrize("function", ["bump", "bump_all"])
def test_a_callable_given_the_connection_runs_once_despite_a_lost_reply(
    mysql_url: str, proxy: FaultProxy, function: str
) -> None:
    create_counters(mysql_url, 5)
    handler = f"tests.support.connection_hooks:{function}"
    route = f'[[routes]]\npattern = "bump:{{id}}"\nhandler = "{handler}"\n'
    loaded, bump = handler_for(through(proxy, mysql_url), route)
    keys = [f"bump:{i}" for i in range(5)]
    proxy.drop_commit_replies(1)
    first = bump.run_many(expiries(loaded, keys))
    assert all(isinstance(o, CommitUnknown) for o in first), first
    retried = results(bump.run_many(expiries(loaded, keys, attempt=2)))
    assert retried == [Result(Outcome.APPLIED, 1, committed_by_attempt=1)] * 5
    assert counts(mysql_url) == [1] * 5


def test_an_expiry_a_batch_handler_fails_keeps_none_of_its_statements(database_url: str) -> None:
    create_counters(database_url, 4)
    handler = "tests.support.connection_hooks:bump_all_failing_odd"
    route = f'[[routes]]\npattern = "bump:{{id}}"\nhandler = "{handler}"\n'
    loaded, bump = handler_for(database_url, route)
    endings = bump.run_many(expiries(loaded, [f"bump:{i}" for i in range(4)]))
    assert [isinstance(e, Exception) for e in endings] == [False, True, False, True]
    assert counts(database_url) == [1, 0, 1, 0]


@pytest.mark.mysql
def test_a_lost_commit_reply_of_cancelled_orders_is_applied_not_skipped(
    mysql_url: str, proxy: FaultProxy
) -> None:
    numbers = [f"SN{n}" for n in range(10)]
    create_orders(mysql_url, dict.fromkeys(numbers, 0))
    loaded, cancel = handler_for(through(proxy, mysql_url), ORDER_ROUTES)
    keys = [f"order:cancel:{n}" for n in numbers]
    proxy.drop_commit_replies(1, after=1)  # the first sets READ COMMITTED

    first = cancel.run_many(expiries(loaded, keys))
    assert proxy.dropped == 1
    assert all(isinstance(o, CommitUnknown) for o in first), first
    assert set(statuses(mysql_url).values()) == {3}

    retried = results(cancel.run_many(expiries(loaded, keys, attempt=2)))
    assert retried == [Result(Outcome.APPLIED, 1, committed_by_attempt=1)] * 10


@pytest.mark.mysql
def test_without_the_inbox_a_lost_reply_is_warned_of_and_retried_not_rerun_at_once(
    mysql_url: str, proxy: FaultProxy
) -> None:
    create_counters(mysql_url, 5)
    loaded, bump = handler_for(
        through(proxy, mysql_url), BUMP, database="[database]\ninbox = false\n"
    )
    proxy.drop_commit_replies(1)
    with capture_logs() as logs:
        first = bump.run_many(expiries(loaded, [f"bump:{i}" for i in range(5)]))
    assert all(isinstance(o, CommitUnknown) for o in first), first
    assert counts(mysql_url) == [1] * 5
    (warning,) = [line for line in logs if line["event"] == "commit.unknown"]
    assert warning["inbox"] is False


def test_a_settled_expiry_is_never_run_again_by_a_later_attempt(database_url: str) -> None:
    create_counters(database_url, 3)
    loaded, bump = handler_for(database_url, BUMP)
    keys = ["bump:0", "bump:1"]
    assert results(bump.run_many(expiries(loaded, keys))) == [Result(Outcome.APPLIED, 1)] * 2
    again = results(bump.run_many(expiries(loaded, [*keys, "bump:2"], attempt=2)))
    assert again == [
        Result(Outcome.APPLIED, 1, committed_by_attempt=1),
        Result(Outcome.APPLIED, 1, committed_by_attempt=1),
        Result(Outcome.APPLIED, 1),
    ]
    assert counts(database_url) == [1, 1, 1]


def inbox_lookups(engine: Engine) -> list[str]:
    """The statements that will look ids up in the inbox through `engine`, as they are
    sent (not the prune's, which selects by time)."""
    sent: list[str] = []

    def note(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if statement.startswith("SELECT") and "expiryd_applied.expiry_id IN" in statement:
            sent.append(statement)

    event.listen(engine, "before_cursor_execute", note)
    return sent


def test_a_first_run_is_not_looked_up_in_the_inbox(database_url: str) -> None:
    create_counters(database_url, 2)
    loaded, bump = handler_for(database_url, BUMP)
    lookups = inbox_lookups(bump.engine)  # type: ignore[attr-defined]
    keys = ["bump:0", "bump:1"]

    first = bump.run_many(expiries(loaded, keys, first_run=True))
    assert results(first) == [Result(Outcome.APPLIED, 1)] * 2
    assert lookups == []

    again = bump.run_many(expiries(loaded, keys, attempt=2))
    assert results(again) == [Result(Outcome.APPLIED, 1, committed_by_attempt=1)] * 2
    assert len(lookups) == 1
    assert counts(database_url) == [1, 1]


def test_a_first_run_that_did_commit_is_rolled_back_and_its_retry_finds_it(
    database_url: str,
) -> None:
    """An expiry taken for a first run although an attempt of it committed (a dead
    letter replayed after its worker died past its commit): its inbox entry fails the
    INSERT, which rolls its work back; the rest of its group commits on its own, and
    the retry, no longer a first run, finds it."""
    create_counters(database_url, 3)
    loaded, bump = handler_for(database_url, BUMP)
    bump.run_many(expiries(loaded, ["bump:0", "bump:1"], first_run=True))

    group = bump.run_many(expiries(loaded, ["bump:0", "bump:1", "bump:2"], first_run=True))
    assert all(isinstance(e, CommittedMeanwhile) for e in group[:2]), group
    assert group[2] == Result(Outcome.APPLIED, 1)
    with pytest.raises(CommittedMeanwhile):
        bump.run_many(expiries(loaded, ["bump:0"], first_run=True))
    assert counts(database_url) == [1, 1, 1]

    retried = bump.run_many(expiries(loaded, ["bump:0", "bump:1"], attempt=2))
    assert results(retried) == [Result(Outcome.APPLIED, 1, committed_by_attempt=1)] * 2
    assert counts(database_url) == [1, 1, 1]


def test_a_first_run_of_a_cancelled_order_that_did_commit_is_found_applied(
    database_url: str,
) -> None:
    create_orders(database_url, {"SN1": 0, "SN2": 0})
    loaded, cancel = handler_for(database_url, ORDER_ROUTES)
    cancel.run_many(expiries(loaded, ["order:cancel:SN1"], first_run=True))

    keys = ["order:cancel:SN1", "order:cancel:SN2"]
    group = cancel.run_many(expiries(loaded, keys, first_run=True))
    assert isinstance(group[0], CommittedMeanwhile), group  # not `skipped`
    assert group[1] == Result(Outcome.APPLIED, 1)
    retried = cancel.run_many(expiries(loaded, keys[:1], attempt=2))
    assert results(retried) == [Result(Outcome.APPLIED, 1, committed_by_attempt=1)]


def test_every_entry_comes_back_from_the_inbox_as_recorded(database_url: str) -> None:
    """Ids are bound parameters, whatever they hold; the rest of a row is written out,
    once for each distinct entry, into a table whose name needs quoting."""
    engine = make_engine(load(database_url, BUMP).database)
    inbox = Inbox.open(engine, "expiryd applied 100%")
    entries = [
        ("plain", 1, Result(Outcome.APPLIED, 1)),
        ("it's \\ 100% %s ?", 1, Result(Outcome.APPLIED, 1)),
        ("skipped", 2, Result(Outcome.SKIPPED, 0)),
        ("unknown count", 5, Result(Outcome.APPLIED, None)),
        ("many", 1, Result(Outcome.APPLIED, 3)),
    ]
    with engine.begin() as connection:
        inbox.record(connection, entries)
    with engine.connect() as connection:
        found = inbox.look_up(connection, [expiry_id for expiry_id, _, _ in entries])
        times = connection.execute(select(inbox.table.c.applied_at_ms).distinct()).all()
    assert found == {i: Entry(attempt, result) for i, attempt, result in entries}
    assert len(times) == 1
    engine.dispose()


def test_an_inbox_needs_a_driver_that_takes_positional_parameters(sqlite_url: str) -> None:
    engine = create_engine(sqlite_url, paramstyle="named")
    with pytest.raises(ConfigError, match="inbox = false"):
        Inbox.open(engine, "expiryd_applied")


def test_a_group_rolled_back_records_only_what_then_committed_alone(database_url: str) -> None:
    execute(database_url, "CREATE TABLE seen (id INTEGER PRIMARY KEY)")
    execute(database_url, "INSERT INTO seen VALUES (1)")
    loaded, insert = handler_for(
        database_url,
        BUMP.replace(
            "UPDATE counters SET n = n + 1 WHERE id = :id", "INSERT INTO seen VALUES (:id)"
        ),
    )
    outcomes = insert.run_many(expiries(loaded, ["bump:0", "bump:1", "bump:2"]))
    assert outcomes[0] == outcomes[2] == Result(Outcome.APPLIED, 1)
    assert isinstance(outcomes[1], Exception)
    entries = rows(database_url, "SELECT expiry_id FROM expiryd_applied ORDER BY expiry_id")
    assert entries == [("id-bump:0",), ("id-bump:2",)]


def test_a_missing_inbox_is_created_or_refused_with_its_ddl(database_url: str) -> None:
    create_counters(database_url, 1)
    loaded = load(database_url, BUMP)
    engine = make_engine(loaded.database)
    handlers = build_handlers(loaded, engine, redis.Redis(), create_inbox=False)
    assert handlers["bump:{id}"].inbox is None  # type: ignore[attr-defined]
    assert not exists(engine, "expiryd_applied")
    if database_url.startswith("sqlite"):  # opened read-only: no CREATE
        read_only = load(f"sqlite:///file:{make_url(database_url).database}?mode=ro&uri=true", BUMP)
        with pytest.raises(ConfigError) as refused:
            build_handlers(read_only, make_engine(read_only.database), redis.Redis())
        assert "CREATE TABLE expiryd_applied" in str(refused.value)
        assert "expiryd init-db" in str(refused.value)
    build_handlers(loaded, engine, redis.Redis())
    assert rows(database_url, "SELECT COUNT(*) FROM expiryd_applied") == [(0,)]


def test_ids_past_their_keeping_time_are_pruned(database_url: str) -> None:
    create_counters(database_url, 3)
    loaded, bump = handler_for(database_url, BUMP)
    bump.run_many(expiries(loaded, ["bump:0", "bump:1", "bump:2"]))
    engine = make_engine(loaded.database)
    inbox = Inbox.open(engine, "expiryd_applied")
    (applied_at,) = rows(database_url, "SELECT MAX(applied_at_ms) FROM expiryd_applied")[0]
    execute(
        database_url, "UPDATE expiryd_applied SET applied_at_ms = 0 WHERE expiry_id = 'id-bump:0'"
    )
    assert inbox.prune(engine, now_ms=int(str(applied_at)) + inbox.keep_ms) == 1  # type: ignore[call-overload]
    left = rows(database_url, "SELECT expiry_id FROM expiryd_applied ORDER BY expiry_id")
    assert left == [("id-bump:1",), ("id-bump:2",)]


# Keys matched to rows as the database matches them


def create_nocase_orders(url: str, orders: dict[str, int]) -> None:
    """The sample table with a case-insensitive key column, as MariaDB's default
    collations and SQLite's NOCASE have it."""
    collation = "utf8mb4_general_ci" if url.startswith("mysql") else "NOCASE"
    execute(
        url,
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, "
        f"order_sn VARCHAR(64) COLLATE {collation} NOT NULL UNIQUE, status INTEGER NOT NULL)",
    )
    for i, (number, status) in enumerate(orders.items()):
        execute(url, f"INSERT INTO orders VALUES ({i}, '{number}', {status})")


def test_a_key_differing_in_case_from_its_row_is_applied(database_url: str) -> None:
    create_nocase_orders(database_url, {"SN7": 0, "SN8": 1})
    loaded, cancel = handler_for(database_url, ORDER_ROUTES)
    outcomes = cancel.run_many(expiries(loaded, ["order:cancel:sn7", "order:cancel:sn8"]))
    assert results(outcomes) == [Result(Outcome.APPLIED, 1), Result(Outcome.SKIPPED, 0)]
    assert statuses(database_url) == {"SN7": 3, "SN8": 1}


def test_one_order_named_twice_in_two_cases_is_changed_once(database_url: str) -> None:
    create_nocase_orders(database_url, {"SN7": 0})
    loaded, cancel = handler_for(database_url, ORDER_ROUTES)
    outcomes = cancel.run_many(expiries(loaded, ["order:cancel:sn7", "order:cancel:SN7"]))
    assert results(outcomes) == [Result(Outcome.APPLIED, 1), Result(Outcome.SKIPPED, 0)]


@pytest.mark.mysql
def test_a_held_order_named_in_another_case_waits_and_is_applied_after(mysql_url: str) -> None:
    create_nocase_orders(mysql_url, {"SN5": 0, "SN7": 0})
    loaded, cancel = handler_for(mysql_url, ORDER_ROUTES)
    held, release = threading.Event(), threading.Event()

    def payment() -> None:  # holds SN5's row, then rolls back
        engine = make_engine(loaded.database)
        with engine.connect() as connection, connection.begin():
            connection.execute(text("SELECT * FROM orders WHERE order_sn = 'SN5' FOR UPDATE"))
            held.set()
            release.wait(10)
        engine.dispose()

    holder = threading.Thread(target=payment)
    holder.start()
    try:
        assert held.wait(10)
        outcomes = cancel.run_many(expiries(loaded, ["order:cancel:sn5", "order:cancel:sn7"]))
    finally:
        release.set()
        holder.join()
    assert isinstance(outcomes[0], Busy), outcomes
    assert outcomes[1] == Result(Outcome.APPLIED, 1)
    assert statuses(mysql_url) == {"SN5": 0, "SN7": 3}

    again = cancel.run_many(expiries(loaded, ["order:cancel:sn5"], attempt=2))
    assert again == [Result(Outcome.APPLIED, 1)]
    assert statuses(mysql_url) == {"SN5": 3, "SN7": 3}

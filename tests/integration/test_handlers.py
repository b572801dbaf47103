"""The handlers against real databases: every test runs on MariaDB and on SQLite."""

import tomllib
from collections.abc import Callable

import pytest
import redis
from sqlalchemy.exc import DBAPIError

from expiryd import config
from expiryd.database.engine import make_engine
from expiryd.errors import ConfigError
from expiryd.expiry import Expiry
from expiryd.handlers import Handler, build_handlers
from expiryd.outcomes import Outcome, Result
from expiryd.routes import match_route
from tests.support.shop import ORDER_ROUTES, SEED_ORDERS, create_orders, execute, rows, statuses

Run = Callable[[str], Result]


def handlers_for(url: str, toml: str) -> tuple[config.Config, dict[str, Handler]]:
    loaded = config.parse(tomllib.loads(toml), "shop.toml", {"EXPIRYD_DATABASE_URL": url})
    # No route here writes to Redis: the client is never connected.
    return loaded, build_handlers(loaded, make_engine(loaded.database), redis.Redis())


def runner(url: str, toml: str = ORDER_ROUTES) -> Run:
    loaded, handlers = handlers_for(url, toml)

    def run(key: str) -> Result:
        found = match_route(loaded.routes, key)
        assert found is not None, key
        return handlers[found.route.name](Expiry(key, found.route.name, found.fields))

    return run


def test_cancel_moves_an_unpaid_order_to_cancelled(database_url: str) -> None:
    create_orders(database_url, {"SN1": 0, "SN2": 0})
    assert runner(database_url)("order:cancel:SN1") == Result(Outcome.APPLIED, 1)
    assert statuses(database_url) == {"SN1": 3, "SN2": 0}


def test_an_order_paid_before_its_deadline_is_skipped(database_url: str) -> None:
    create_orders(database_url, {"SN1": 1})
    assert runner(database_url)("order:cancel:SN1") == Result(Outcome.SKIPPED, 0)
    assert statuses(database_url) == {"SN1": 1}


def test_complete_moves_a_shipped_order_only(database_url: str) -> None:
    create_orders(database_url, {"SN1": 2, "SN2": 0})
    run = runner(database_url)
    assert run("order:complete:SN1").outcome is Outcome.APPLIED
    assert run("order:complete:SN2").outcome is Outcome.SKIPPED
    assert statuses(database_url) == {"SN1": 4, "SN2": 0}


def test_an_unknown_order_is_skipped(database_url: str) -> None:
    create_orders(database_url, {"SN1": 0})
    assert runner(database_url)("order:cancel:NOPE").outcome is Outcome.SKIPPED


@pytest.mark.parametrize("hostile", ["x' OR '1'='1", "SN1'; DROP TABLE orders; --", "SN1\\", "%"])
def test_injection_shaped_order_numbers_touch_only_that_literal_order(
    database_url: str, hostile: str
) -> None:
    create_orders(database_url, {"SN1": 0, "SN2": 0, hostile: 0})
    assert runner(database_url)(f"order:cancel:{hostile}") == Result(Outcome.APPLIED, 1)
    assert statuses(database_url) == {"SN1": 0, "SN2": 0, hostile: 3}


def test_the_seed_schema_with_varchar_status_and_reserved_table_name(database_url: str) -> None:
    create_orders(database_url, {"SN1700000000T12345678": "0", "SN2": "1"}, SEED_ORDERS)
    toml = """
        [orders]
        table = "order"
        key_column = "ordersn"
        status_column = "status"
        cancel = { from = [0], to = 3 }
        [[routes]]
        pattern = "{order_sn}:{use_mysql}"
        handler = "orders.cancel"
    """
    run = runner(database_url, toml)
    assert run("SN1700000000T12345678:1").outcome is Outcome.APPLIED
    assert run("SN2:1").outcome is Outcome.SKIPPED
    assert statuses(database_url, SEED_ORDERS) == {"SN1700000000T12345678": "3", "SN2": "1"}


def test_an_integer_key_column_skips_a_non_numeric_order_number(database_url: str) -> None:
    execute(database_url, "CREATE TABLE orders (order_sn INTEGER PRIMARY KEY, status INTEGER)")
    execute(database_url, "INSERT INTO orders VALUES (0, 0), (7, 0)")
    run = runner(database_url)
    assert run("order:cancel:abc").outcome is Outcome.SKIPPED
    assert run("order:cancel:7").outcome is Outcome.APPLIED
    assert statuses(database_url) == {0: 0, 7: 3}


def test_sql_handler_binds_pattern_fields(database_url: str) -> None:
    execute(database_url, "CREATE TABLE coupons (id INTEGER, user_id INTEGER, state VARCHAR(16))")
    execute(database_url, "INSERT INTO coupons VALUES (1, 10, 'active'), (1, 11, 'active')")
    toml = """
        [[routes]]
        pattern = "coupon:expire:{coupon_id}:{user_id}"
        handler = "sql"
        sql = '''UPDATE coupons SET state = "expired"
                 WHERE id = :coupon_id AND user_id = :user_id AND state = "active"'''
    """
    run = runner(database_url, toml)
    assert run("coupon:expire:1:10") == Result(Outcome.APPLIED, 1)
    assert run("coupon:expire:1:10") == Result(Outcome.SKIPPED, 0)
    try:  # strict MariaDB refuses to compare the text with an integer; SQLite finds no row
        assert run("coupon:expire:1:11' OR '1'='1") == Result(Outcome.SKIPPED, 0)
    except DBAPIError as exc:
        assert "Truncated incorrect" in str(exc)
    assert rows(database_url, "SELECT user_id, state FROM coupons ORDER BY user_id") == [
        (10, "expired"),
        (11, "active"),
    ]


def test_callable_handler_receives_the_expiry(database_url: str) -> None:
    toml = """
        [[routes]]
        pattern = "hook:{name}:{flag}"
        handler = "tests.support.hooks:remember"
    """
    from tests.support import hooks

    hooks.seen.clear()
    assert runner(database_url, toml)("hook:abc:1") == Result(Outcome.APPLIED)
    assert hooks.seen == [Expiry("hook:abc:1", "hook:{name}:{flag}", {"name": "abc", "flag": "1"})]


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[[routes]]\npattern = "a:{x}"\nhandler = "orders.refund"\n', "unknown handler"),
        ('[[routes]]\npattern = "a:{x}"\nhandler = "orders.cancel"\n', "needs a {order_sn} field"),
        ('[[routes]]\npattern = "a:{x}"\nhandler = "sql"\n', 'needs sql = "UPDATE'),
        (
            '[[routes]]\npattern = "a:{x}"\nhandler = "sql"\nsql = "UPDATE t SET a = :y"\n',
            "sql uses :y, which the pattern does not capture",
        ),
        ('[[routes]]\npattern = "a:{x}"\nhandler = "nosuch.module:f"\n', "cannot import 'nosuch"),
        ('[[routes]]\npattern = "a:{x}"\nhandler = "tests.support.hooks:nope"\n', "no callable"),
        ('[orders]\ntable = "nosuch"\n' + ORDER_ROUTES, "table 'nosuch' does not exist"),
        (
            '[orders]\nkey_column = "ordersn"\n' + ORDER_ROUTES,
            "key_column: 'ordersn' is not a column of table 'orders'",
        ),
        (
            '[orders]\nstatus_column = "state"\n' + ORDER_ROUTES,
            "status_column: 'state' is not a column",
        ),
        (
            '[orders]\ncancel = { from = ["unpaid"], to = 3 }\n' + ORDER_ROUTES,
            "cancel.from: 'unpaid' does not fit the status column",
        ),
    ],
)
def test_handler_config_errors_name_the_route_and_the_problem(
    database_url: str, toml: str, message: str
) -> None:
    create_orders(database_url, {})
    with pytest.raises(ConfigError, match=r"shop\.toml: ") as caught:
        handlers_for(database_url, toml)
    assert message in str(caught.value)


def test_tls_required_refuses_a_server_without_tls(mysql_url: str) -> None:
    from expiryd.config import DatabaseSettings

    engine = make_engine(DatabaseSettings(url=mysql_url, tls="required"))
    with pytest.raises(DBAPIError, match="SSL"), engine.connect():
        pass


def run_group(url: str, keys: list[str], toml: str = ORDER_ROUTES) -> list[object]:
    loaded, handlers = handlers_for(url, toml)
    found = [match_route(loaded.routes, key) for key in keys]
    assert all(found) and len({m.route.name for m in found if m}) == 1
    expiries = [Expiry(k, m.route.name, m.fields) for k, m in zip(keys, found, strict=True) if m]
    return handlers[expiries[0].route].run_many(expiries)


def test_a_group_of_orders_changes_in_one_go_with_an_outcome_for_each(database_url: str) -> None:
    create_orders(database_url, {"SN1": 0, "SN2": 1, "SN3": 0, "SN4": 3})
    keys = [f"order:cancel:{n}" for n in ("SN1", "SN2", "SN3", "SN4", "NOPE", "SN1")]
    outcomes = run_group(database_url, keys)
    assert outcomes == [
        Result(Outcome.APPLIED, 1),
        Result(Outcome.SKIPPED, 0),  # paid meanwhile
        Result(Outcome.APPLIED, 1),
        Result(Outcome.SKIPPED, 0),  # already cancelled
        Result(Outcome.SKIPPED, 0),  # unknown
        Result(Outcome.SKIPPED, 0),  # the same order again: changed once
    ]
    assert statuses(database_url) == {"SN1": 3, "SN2": 1, "SN3": 3, "SN4": 3}


def test_one_failing_statement_in_a_group_fails_alone(database_url: str) -> None:
    execute(database_url, "CREATE TABLE seen (name VARCHAR(20) NOT NULL UNIQUE)")
    execute(database_url, "INSERT INTO seen (name) VALUES ('dup')")
    toml = (
        '[[routes]]\npattern = "seen:{name}"\nhandler = "sql"\n'
        'sql = "INSERT INTO seen (name) VALUES (:name)"\n'
    )
    outcomes = run_group(database_url, ["seen:a", "seen:dup", "seen:b"], toml)
    assert outcomes[0] == Result(Outcome.APPLIED, 1) == outcomes[2]
    assert isinstance(outcomes[1], DBAPIError)
    assert sorted(r[0] for r in rows(database_url, "SELECT name FROM seen")) == ["a", "b", "dup"]

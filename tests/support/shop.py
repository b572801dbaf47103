"""Order tables for the tests, in the shapes shops really have."""

from __future__ import annotations

from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, create_engine, text

from expiryd.config import OrdersSettings
from expiryd.database.sample import create_sample_table

ORDER_ROUTES = """
[[routes]]
pattern = "order:cancel:{order_sn}"
handler = "orders.cancel"

[[routes]]
pattern = "order:complete:{order_sn}"
handler = "orders.complete"
"""
"""The two order routes, as a config file has them."""

SEED_ORDERS = OrdersSettings(table="order", key_column="ordersn", status_column="status")
"""The seed's schema: a table literally named `order`, varchar status and order number."""


def engine_for(url: str) -> Engine:
    return create_engine(url)


def create_orders(
    url: str,
    orders: dict[str, int | str],
    settings: OrdersSettings | None = None,
    create: bool = True,
) -> None:
    """The table `settings` describes (the default sample table when None), with rows."""
    engine = engine_for(url)
    settings = settings or OrdersSettings()
    if create and settings.table == SEED_ORDERS.table:
        _create_seed_table(engine)
    elif create:
        create_sample_table(engine, settings)
    table = Table(settings.table, MetaData(), autoload_with=engine)
    rows = [{settings.key_column: n, settings.status_column: s} for n, s in orders.items()]
    with engine.begin() as connection:
        if rows:
            connection.execute(table.insert(), rows)
    engine.dispose()


def _create_seed_table(engine: Engine) -> None:
    Table(
        "order",
        MetaData(),
        Column("ordersn", String(255), nullable=False, server_default=""),
        Column("status", String(255), nullable=False, server_default=""),
        Column("createtime", String(255), nullable=False, server_default=""),
        Column("id", Integer, primary_key=True, autoincrement=True),
    ).create(engine)


def statuses(url: str, settings: OrdersSettings | None = None) -> dict[str, int | str]:
    settings = settings or OrdersSettings()
    engine = engine_for(url)
    table = Table(settings.table, MetaData(), autoload_with=engine)
    with engine.connect() as connection:
        rows = connection.execute(
            table.select().with_only_columns(
                table.c[settings.key_column], table.c[settings.status_column]
            )
        ).all()
    engine.dispose()
    return {row[0]: row[1] for row in rows}


def rows(url: str, sql: str) -> list[tuple[object, ...]]:
    engine = engine_for(url)
    with engine.connect() as connection:
        found = [tuple(row) for row in connection.execute(text(sql))]
    engine.dispose()
    return found


def execute(url: str, sql: str) -> None:
    engine = engine_for(url)
    with engine.begin() as connection:
        connection.execute(text(sql))
    engine.dispose()


def add_audit(url: str) -> None:
    """One audit row per order whose status really changed: "exactly once" read from the
    database (MariaDB or SQLite)."""
    if url.startswith("sqlite"):
        execute(
            url,
            "CREATE TABLE order_audit (id INTEGER PRIMARY KEY,"
            " order_sn VARCHAR(64) NOT NULL, old_status INTEGER, new_status INTEGER)",
        )
        execute(
            url,
            """CREATE TRIGGER orders_audit AFTER UPDATE ON orders FOR EACH ROW
            WHEN OLD.status IS NOT NEW.status
            BEGIN
              INSERT INTO order_audit (order_sn, old_status, new_status)
              VALUES (NEW.order_sn, OLD.status, NEW.status);
            END""",
        )
        return
    execute(
        url,
        "CREATE TABLE order_audit (id INTEGER AUTO_INCREMENT PRIMARY KEY,"
        " order_sn VARCHAR(64) NOT NULL, old_status INTEGER, new_status INTEGER)",
    )
    execute(
        url,
        """CREATE TRIGGER orders_audit AFTER UPDATE ON orders FOR EACH ROW
        BEGIN
          IF NOT (OLD.status <=> NEW.status) THEN
            INSERT INTO order_audit (order_sn, old_status, new_status)
            VALUES (NEW.order_sn, OLD.status, NEW.status);
          END IF;
        END""",
    )


def audit(url: str) -> list[str]:
    """The order numbers of every status change, one entry per change."""
    return [str(row[0]) for row in rows(url, "SELECT order_sn FROM order_audit")]


def add_calls(url: str) -> None:
    """The table `hooks.record_call` writes one row per handler call into."""
    from tests.support.hooks import CALLS_TABLE

    execute(url, CALLS_TABLE)


def calls(url: str) -> list[tuple[str, str, int]]:
    """(key, expiry id, attempt) of every recorded handler call."""
    return [
        (str(k), str(i), int(a))  # type: ignore[call-overload]
        for k, i, a in rows(url, "SELECT key_name, expiry_id, attempt FROM calls")
    ]

"""`expiryd init-db`: a sample orders table shaped by the [orders] settings, for trying
expiryd out. An existing table is never touched."""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Engine, Integer, MetaData, String, Table, func, inspect

from expiryd.config import OrdersSettings


def create_sample_table(engine: Engine, orders: OrdersSettings) -> bool:
    """Create the table; False when it already exists."""
    if inspect(engine).has_table(orders.table):
        return False
    table = Table(
        orders.table,
        MetaData(),
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column(orders.key_column, String(64), nullable=False, unique=True),
        Column(orders.status_column, Integer, nullable=False, default=0),
        Column("created_at", DateTime, nullable=False, server_default=func.now()),
    )
    table.create(engine, checkfirst=True)
    return True

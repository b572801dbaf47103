"""The bench's shop: an orders table of the sample's shape, an audit trigger that stamps
each status change with the database's own clock, and the keys that schedule them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pymysql
import redis
from sqlalchemy import create_engine

from expiryd.config import OrdersSettings
from expiryd.database.sample import create_sample_table

CANCELLED = 3
CHUNK = 10_000

AUDIT_TABLE = """CREATE TABLE order_audit (
  id BIGINT AUTO_INCREMENT PRIMARY KEY,
  order_sn VARCHAR(64) NOT NULL,
  changed_at DECIMAL(17, 6) NOT NULL)"""

AUDIT_TRIGGER = """CREATE TRIGGER orders_audit AFTER UPDATE ON orders FOR EACH ROW
BEGIN
  IF NOT (OLD.status <=> NEW.status) THEN
    INSERT INTO order_audit (order_sn, changed_at)
    VALUES (NEW.order_sn, UNIX_TIMESTAMP(SYSDATE(6)));
  END IF;
END"""
"""SYSDATE(6), unlike NOW(6), is the moment the row changed, not the statement's start."""


def order_numbers(count: int) -> list[str]:
    return [f"SN{n:08d}" for n in range(count)]


@dataclass(frozen=True)
class Shop:
    """One database of the bench: `orders` with `count` unpaid orders, and its audit."""

    url: str
    admin: pymysql.Connection  # type: ignore[type-arg]

    @classmethod
    def create(cls, url: str, admin: pymysql.Connection, count: int) -> Shop:  # type: ignore[type-arg]
        engine = create_engine(url)
        create_sample_table(engine, OrdersSettings())
        engine.dispose()
        with admin.cursor() as cursor:
            cursor.execute(AUDIT_TABLE)
            cursor.execute(AUDIT_TRIGGER)
            for chunk in chunks(order_numbers(count), CHUNK):
                cursor.executemany("INSERT INTO orders (order_sn, status) VALUES (%s, 0)", chunk)
        return cls(url, admin)

    def changed(self) -> int:
        with self.admin.cursor() as cursor:
            cursor.execute("SELECT COUNT(*) FROM order_audit")
            return int(cursor.fetchone()[0])

    def changes(self) -> list[tuple[str, float]]:
        """(order number, when its status changed), every change in commit order."""
        with self.admin.cursor() as cursor:
            cursor.execute("SELECT order_sn, changed_at FROM order_audit ORDER BY id")
            return [(sn, float(at)) for sn, at in cursor.fetchall()]


def chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def schedule(client: redis.Redis, numbers: Sequence[str], deadlines_ms: Sequence[int]) -> None:
    """What producers do, pipelined: each order's cancel key, due at its deadline."""
    for start in range(0, len(numbers), CHUNK):
        with client.pipeline(transaction=False) as pipe:
            for n in range(start, min(start + CHUNK, len(numbers))):
                pipe.execute_command(
                    "SET", f"order:cancel:{numbers[n]}", "1", "PXAT", deadlines_ms[n]
                )
            pipe.execute()


def other_keys(client: redis.Redis, count: int, ttl_ms: int) -> None:
    """Keys nobody routes, with a TTL: sessions, caches, what else lives in the DB."""
    for start in range(0, count, CHUNK):
        with client.pipeline(transaction=False) as pipe:
            for n in range(start, min(start + CHUNK, count)):
                pipe.execute_command("PSETEX", f"session:{n}", ttl_ms, "x")
            pipe.execute()

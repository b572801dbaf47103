"""Redis memory per ledger entry and per queued job, measured on an empty DB with
expiryd's own scripts (no daemon running)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

from expiryd.redis.keyspace import Keyspace
from expiryd.redis.ledger import Ledger, Op, Step

WINDOW = 1000


@dataclass(frozen=True)
class Footprint:
    keys: int
    per_ledger_entry: float
    per_queued_job: float


def measure(client: redis.Redis, db: int, count: int = 100_000) -> Footprint:
    ledger = Ledger(client, Keyspace("expiryd:", db), capture_values=False, max_value_bytes=0)
    client.flushdb()
    empty = _used(client)
    keys = [f"order:cancel:FP{n:08d}".encode() for n in range(count)]
    due_ms = int(time.time() * 1000) + 3000
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.execute_command("SET", key, "1", "PXAT", due_ms)
        pipe.execute()
    with_keys = _used(client)
    for at in range(0, count, WINDOW):
        ledger.record(keys[at : at + WINDOW])
    recorded = _used(client)
    time.sleep(max(0.0, due_ms / 1000 - time.time()) + 0.1)
    for at in range(0, count, WINDOW):
        ledger.apply([Step(Op.CLAIM, key) for key in keys[at : at + WINDOW]])
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.exists(key)  # an expired key is deleted when touched
        pipe.execute()
    queued = _used(client)
    client.flushdb()
    return Footprint(count, (recorded - with_keys) / count, (queued - empty) / count)


def _used(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])

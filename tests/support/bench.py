"""Measurements of the real daemon on throwaway servers; run through ./scripts/bench.

burst [N]     N orders whose keys expire in the same second: throughput and lateness
lateness      1,000 orders due at one moment among 100,000 other keys with a TTL:
              lateness with expiryd's ledger, and with a bare subscriber that waits
              for Redis to announce each expiry (what a keyspace-notification script does)
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import redis

from tests.support.daemon import DaemonProcess, psetex_many
from tests.support.servers import MariaDB, RedisServer
from tests.support.shop import create_orders, statuses

OTHER_KEYS = 100_000
DUE = 1000


def main(args: list[str]) -> None:
    scenario = args[0] if args else "burst"
    with tempfile.TemporaryDirectory(prefix="expiryd-bench-") as work:
        root = Path(work)
        redis_server, mariadb = RedisServer(root / "redis"), MariaDB(root / "mariadb")
        redis_server.start()
        mariadb.start()
        try:
            if scenario == "burst":
                burst(int(args[1]) if len(args) > 1 else 5000, root, redis_server, mariadb)
            elif scenario == "lateness":
                lateness(root, redis_server, mariadb)
            else:
                raise SystemExit(f"unknown scenario {scenario!r}: burst [N] or lateness")
        finally:
            redis_server.stop()
            mariadb.stop()


def start_daemon(root: Path, redis_server: RedisServer, url: str) -> DaemonProcess:
    config = root / "expiryd.toml"
    config.write_text(f'[redis]\nurl = "{redis_server.url()}"\n[database]\nurl = "{url}"\n')
    daemon = DaemonProcess(config)
    daemon.wait_for_event("ledger.synced", timeout=120)
    return daemon


def burst(count: int, root: Path, redis_server: RedisServer, mariadb: MariaDB) -> None:
    url = mariadb.create_database("bench")
    create_orders(url, {f"SN{n:08d}": 0 for n in range(count)})
    daemon = start_daemon(root, redis_server, url)
    due = time.time() + 2
    psetex_many(redis_server.client(), [f"order:cancel:SN{n:08d}" for n in range(count)], 2000)
    daemon.wait_for_event("expiry.handled", count, timeout=600)
    daemon.stop()
    lines = daemon.handled()
    stamps = [datetime.fromisoformat(line["timestamp"]).timestamp() for line in lines]
    spread = max(stamps) - min(stamps)
    cancelled = sum(1 for status in statuses(url).values() if status == 3)
    print(f"burst: {count} expiries, {cancelled} orders cancelled")
    print(f"  handled in {spread:.2f}s from first to last: {count / max(spread, 1e-9):.0f}/s")
    print(f"  per expiry: median {statistics.median(x['duration_ms'] for x in lines):.2f} ms")
    report("  lateness after the deadline", [stamp - due for stamp in stamps])


def lateness(root: Path, redis_server: RedisServer, mariadb: MariaDB) -> None:
    client = redis_server.client()
    psetex_many(client, [f"session:{n}" for n in range(OTHER_KEYS)], 3_600_000)
    for spread_ms in (0, 10_000):
        when = "at one moment" if not spread_ms else f"spread over {spread_ms // 1000} s"
        print(f"lateness: {DUE} orders due {when}, {OTHER_KEYS} other keys with a 1 h TTL")
        ttls = [2000 + n * spread_ms // DUE for n in range(DUE)]
        report("  bare subscriber (no ledger)", bare_subscriber(client, ttls))
        url = mariadb.create_database(f"lateness{spread_ms}")
        create_orders(url, {f"SN{n:06d}": 0 for n in range(DUE)})
        daemon = start_daemon(root, redis_server, url)
        synced = daemon.events("ledger.synced")[0]
        keys, took = synced["keys_with_ttl"], synced["duration_ms"]
        print(f"  expiryd's start-up scan: {keys} keys with a TTL recorded in {took} ms")
        psetex_many(client, [f"order:cancel:SN{n:06d}" for n in range(DUE)], ttls)
        daemon.wait_for_event("expiry.handled", DUE, timeout=120)
        daemon.stop()
        late = [line["lateness_ms"] / 1000 for line in daemon.handled()]
        sources = Counter(line["source"] for line in daemon.handled())
        print(f"  expiryd: {len(late)} orders handled, by source: {dict(sources)}")
        report("  expiryd with its ledger", late)


def bare_subscriber(client: redis.Redis, ttls: list[int], wait_s: float = 90) -> list[float]:
    """Seconds late of each announcement; keys never announced within `wait_s` after the
    last deadline count as that late (and are reported)."""
    arrived: list[float] = []
    pubsub = client.pubsub()
    pubsub.subscribe("__keyevent@15__:expired")
    pubsub.get_message(timeout=1)
    set_at = time.time()
    psetex_many(client, [f"bare:{n}" for n in range(DUE)], ttls)
    stop = set_at + max(ttls) / 1000 + wait_s
    while len(arrived) < DUE and time.time() < stop:
        message = pubsub.get_message(timeout=0.5)
        if message and message["type"] == "message":
            due = set_at + ttls[int(message["data"].split(b":")[1])] / 1000
            arrived.append(time.time() - due)
    pubsub.close()
    print(f"  bare subscriber: {len(arrived)} of {DUE} announced within {wait_s:.0f}s")
    client.delete(*[f"bare:{n}" for n in range(DUE)])
    return arrived + [wait_s] * (DUE - len(arrived))  # a lower bound for those


def report(label: str, seconds: list[float]) -> None:
    ordered = sorted(seconds)
    pick = lambda q: ordered[min(int(len(ordered) * q), len(ordered) - 1)]  # noqa: E731
    print(
        f"{label}: p50 {pick(0.5) * 1000:.0f} ms, p99 {pick(0.99) * 1000:.0f} ms, "
        f"max {ordered[-1] * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main(sys.argv[1:])

"""A burst of expiries through the real daemon; prints throughput and lateness."""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from tests.support.daemon import DaemonProcess
from tests.support.servers import MariaDB, RedisServer
from tests.support.shop import create_orders, statuses


def main(count: int) -> None:
    with tempfile.TemporaryDirectory(prefix="expiryd-bench-") as work:
        root = Path(work)
        redis_server, mariadb = RedisServer(root / "redis"), MariaDB(root / "mariadb")
        redis_server.start()
        mariadb.start()
        try:
            run(count, root, redis_server, mariadb)
        finally:
            redis_server.stop()
            mariadb.stop()


def run(count: int, root: Path, redis_server: RedisServer, mariadb: MariaDB) -> None:
    url = mariadb.create_database("bench")
    create_orders(url, {f"SN{n:08d}": 0 for n in range(count)})
    config = root / "expiryd.toml"
    config.write_text(f'[redis]\nurl = "{redis_server.url()}"\n[database]\nurl = "{url}"\n')
    daemon = DaemonProcess(config)
    daemon.wait_subscribed()
    client = redis_server.client()
    due = time.time() + 2
    with client.pipeline(transaction=False) as pipe:
        for n in range(count):
            pipe.execute_command("SETEX", f"order:cancel:SN{n:08d}", 2, "x")
        pipe.execute()
    daemon.wait_for_event("expiry.handled", count, timeout=600)
    daemon.stop()
    lines = daemon.handled()
    stamps = [datetime.fromisoformat(line["timestamp"]).timestamp() for line in lines]
    lateness = sorted(stamp - due for stamp in stamps)
    spread = max(stamps) - min(stamps)
    cancelled = sum(1 for status in statuses(url).values() if status == 3)
    print(f"expiries: {count}, cancelled: {cancelled}")
    print(f"handled in {spread:.2f}s from first to last: {count / max(spread, 1e-9):.0f}/s")
    print(f"per expiry: median {statistics.median(line['duration_ms'] for line in lines):.2f} ms")
    print(
        "lateness after the TTL ran out: "
        f"p50 {lateness[len(lateness) // 2]:.2f}s, p99 {lateness[int(len(lateness) * 0.99)]:.2f}s, "
        f"max {lateness[-1]:.2f}s"
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5000)

"""A Redis restart: the listener is back within a fraction of a second of Redis answering,
so the only keys missed are those set and due inside Redis's own outage, not inside a
reconnect backoff after it. The daemon runs as a subprocess against a real redis-server
that is stopped and started again on the same port."""

from __future__ import annotations

import time
from datetime import datetime

from tests.e2e.conftest import StartDaemon, assert_queue_settled
from tests.support.daemon import DaemonProcess, psetex_many
from tests.support.servers import RedisServer
from tests.support.shop import add_calls, calls

OUTAGE_SECONDS = 3
TTL_MS = 1200
"""Shorter than the gap the reconnect backoff used to leave after a 3 s outage (1.7 to
3.6 s measured), and long enough for a loaded 2-core machine to resubscribe in."""
KEYS = [f"gap:{n}" for n in range(5)]
RECORDED = '[[routes]]\npattern = "gap:{n}"\nhandler = "tests.support.hooks:record_call"\n'


def resubscribed_at(daemon: DaemonProcess) -> float:
    daemon.wait_subscribed(2)
    line = daemon.events("listener.subscribed")[-1]
    assert line["resubscribe"] is True
    return datetime.fromisoformat(line["timestamp"]).timestamp()


def ready_at(server: RedisServer) -> float:
    """When redis-server last said it accepts connections (its log has local time, in ms)."""
    log = (server.workdir / "redis.log").read_text().splitlines()
    line = next(line for line in reversed(log) if "Ready to accept connections" in line)
    stamp = " ".join(line.split()[1:5])  # "05 Dec 2026 15:15:12.956"
    return datetime.strptime(stamp, "%d %b %Y %H:%M:%S.%f").timestamp()


def test_keys_set_as_soon_as_a_restarted_redis_answers_are_all_handled(
    sqlite_url: str, redis_db: RedisServer, start_daemon: StartDaemon
) -> None:
    add_calls(sqlite_url)
    daemon = start_daemon(sqlite_url, RECORDED, env={"HOOK_DATABASE_URL": sqlite_url})
    redis_db.stop()
    time.sleep(OUTAGE_SECONDS)
    # The same arguments as before (notify-keyspace-events Egx among them), and no data.
    redis_db.start()
    psetex_many(redis_db.client(), KEYS, TTL_MS)

    lines = daemon.wait_for_event("expiry.handled", len(KEYS), timeout=15)
    assert sorted(line["key"] for line in lines) == KEYS
    assert {line["outcome"] for line in lines} == {"applied"}
    assert sorted(key for key, _, _ in calls(sqlite_url)) == KEYS
    gap = resubscribed_at(daemon) - ready_at(redis_db)
    print(f"resubscribed {gap:.3f} s after Redis was ready")
    assert_queue_settled(redis_db, [daemon])

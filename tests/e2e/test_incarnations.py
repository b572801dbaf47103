"""Which expiries happen: a timer deleted, moved, replaced or renamed before its
deadline is never handled, each expiry is handled once, and a Redis that refuses
commands for a while loses none of the events it published meanwhile."""

from __future__ import annotations

import threading
import time

import redis

from tests.e2e.conftest import StartDaemon, assert_queue_settled
from tests.support.daemon import DaemonProcess
from tests.support.servers import RedisServer
from tests.support.shop import create_orders, statuses

ACCEPT = '[[routes]]\npattern = "t:{n}"\nhandler = "tests.support.hooks:accept"\n'
LONG_ENOUGH = 4  # seconds: past every deadline, a sweep, a marker and a lease


def redis_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return seconds * 1000 + micros // 1000


def keys_handled(daemon: DaemonProcess) -> list[str]:
    return [line["key"] for line in daemon.handled()]


def test_timers_deleted_1ms_before_their_deadline_never_fire(
    sqlite_url: str, redis_db: RedisServer, start_daemon: StartDaemon
) -> None:
    client = redis_db.client()
    daemon = start_daemon(sqlite_url, ACCEPT)
    start = redis_ms(client) + 1000
    deadlines = {f"t:{n}": start + 15 * n for n in range(200)}
    with client.pipeline(transaction=False) as pipe:
        for key, deadline in deadlines.items():
            pipe.set(key, "x", pxat=deadline)
        pipe.set("t:kept", "x", pxat=start + 15 * 200)
        pipe.execute()
    offset = time.time() * 1000 - redis_ms(client)
    expired_first = []  # a DEL that came after the deadline found the timer expired
    for key, deadline in deadlines.items():
        time.sleep(max(0.0, (deadline - 2 + offset) / 1000 - time.time()))
        if client.delete(key) == 0:
            expired_first.append(key)

    daemon.wait_for(lambda: "t:kept" in keys_handled(daemon), 15, "t:kept")
    time.sleep(LONG_ENOUGH)
    # On a loaded machine some DELs come after their deadline: those timers expired.
    assert len(expired_first) < 180, "the DELs came too late to test anything"
    assert sorted(keys_handled(daemon)) == sorted([*expired_first, "t:kept"])
    assert_queue_settled(redis_db, [daemon])


def test_timers_moved_away_or_replaced_fire_only_as_they_now_stand(
    sqlite_url: str, redis_db: RedisServer, start_daemon: StartDaemon
) -> None:
    client = redis_db.client()
    daemon = start_daemon(sqlite_url, ACCEPT)
    for key in ("t:moved", "t:restored", "t:copied", "t:renamed", "t:source"):
        client.set(key, "x", px=1500)
    client.move("t:moved", 14)
    client.restore("t:restored", 3000, client.dump("t:source"), replace=True)
    client.copy("t:source", "t:copied", replace=True)  # carries the source's deadline
    client.rename("t:renamed", "t:renamed-to")
    client.persist("t:source")
    time.sleep(LONG_ENOUGH)
    handled = keys_handled(daemon)
    assert sorted(handled) == ["t:copied", "t:renamed-to", "t:restored"], handled
    restored = next(line for line in daemon.handled() if line["key"] == "t:restored")
    copied = next(line for line in daemon.handled() if line["key"] == "t:copied")
    assert restored["deadline"] > copied["deadline"]  # its own, later TTL
    assert redis_db.client(14).exists("t:moved") == 0  # expired in DB 14, not ours
    assert_queue_settled(redis_db, [daemon])


def test_keys_expiring_in_other_dbs_are_not_handled(
    sqlite_url: str, redis_db: RedisServer, start_daemon: StartDaemon
) -> None:
    daemon = start_daemon(sqlite_url, ACCEPT)
    redis_db.client(3).set("t:elsewhere", "x", px=200)
    redis_db.client().set("t:here", "x", px=400)
    daemon.wait_for_event("expiry.handled")
    time.sleep(1.5)
    assert keys_handled(daemon) == ["t:here"]
    assert_queue_settled(redis_db, [daemon])


def test_events_published_while_redis_refuses_the_ledger_are_all_applied_after(
    sqlite_url: str, redis_db: RedisServer, start_daemon: StartDaemon
) -> None:
    """Redis refuses expiryd's scripts for a while (here: an ACL change, as reliable a
    refusal as out-of-memory or BUSY). The events stay pending and are applied in order
    once Redis accepts them: the timer deleted meanwhile never fires (its `del` waits
    behind claims that failed), every other fires once."""
    create_orders(sqlite_url, {"SN1": 0, "SN2": 0})
    admin = redis_db.client()
    admin.acl_setuser(
        "admin", enabled=True, nopass=True, keys=["*"], channels=["*"], commands=["+@all"]
    )
    admin.execute_command("AUTH", "admin", "x")
    daemon = start_daemon(sqlite_url)
    due = redis_ms(admin) + 1500
    with admin.pipeline(transaction=False) as pipe:
        for n in range(300):
            pipe.set(f"other:{n}", "x", pxat=due)
        pipe.set("order:cancel:SN1", "x", pxat=due + 500)
        pipe.set("order:cancel:SN2", "x", pxat=due + 1000)
        pipe.execute()
    time.sleep(1)
    admin.acl_setuser("default", enabled=True, commands=["-evalsha", "-eval", "-zrem", "-hdel"])
    try:
        daemon.wait_for_event("ledger.unavailable", timeout=10)
        time.sleep(0.6)  # the 300 expire: their claims are refused
        admin.delete("order:cancel:SN2")
        time.sleep(1)  # SN1 expires too
    finally:
        admin.acl_setuser("default", enabled=True, commands=["+@all"])
        admin.acl_deluser("admin")

    daemon.wait_for(lambda: len(daemon.handled()) >= 301, 30, "301 expiries")
    time.sleep(LONG_ENOUGH)
    orders = [line for line in daemon.handled() if line["key"].startswith("order:")]
    assert [line["key"] for line in orders] == ["order:cancel:SN1"]
    assert len(daemon.handled()) == 301
    assert statuses(sqlite_url) == {"SN1": 3, "SN2": 0}
    assert_queue_settled(redis_db, [daemon])


def test_a_key_set_again_right_after_it_expired_is_handled_again(
    sqlite_url: str, redis_db: RedisServer, start_daemon: StartDaemon
) -> None:
    client = redis_db.client()
    daemon = start_daemon(sqlite_url, ACCEPT)
    rounds = 5
    done = threading.Event()

    def rearm() -> None:
        for _ in range(rounds):
            client.set("t:again", "x", px=100)
            time.sleep(0.3)
        done.set()

    threading.Thread(target=rearm, daemon=True).start()
    done.wait(10)
    daemon.wait_for(lambda: len(daemon.handled()) >= rounds, 15, f"{rounds} expiries")
    time.sleep(1)
    lines = daemon.handled()
    assert len(lines) == rounds
    assert len({line["expiry_id"] for line in lines}) == rounds
    assert_queue_settled(redis_db, [daemon])

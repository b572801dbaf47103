"""The ledger's scripts against a real redis-server."""

from __future__ import annotations

import time

import pytest
import redis

from expiryd.expiry import Source
from expiryd.redis.keyfilter import KeyFilter
from expiryd.redis.keyspace import Keyspace
from expiryd.redis.ledger import Ledger, Op, Step
from expiryd.redis.queue import Job
from tests.integration.conftest import KEYSPACE


@pytest.fixture
def ledger(client: redis.Redis) -> Ledger:
    return Ledger(client, KEYSPACE, capture_values=True)


def deadline_of(client: redis.Redis, key: str) -> float | None:
    return client.zscore(KEYSPACE.deadlines, key)


def now_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return seconds * 1000 + micros // 1000


def test_record_keeps_the_deadline_and_the_value(client: redis.Redis, ledger: Ledger) -> None:
    client.set("order:cancel:SN1", "v1", ex=100)
    client.set("plain", "no ttl")
    assert ledger.record([b"order:cancel:SN1", b"plain", b"missing"]) == 1
    deadline = deadline_of(client, "order:cancel:SN1")
    assert deadline is not None
    assert abs(deadline - (now_ms(client) + 100_000)) < 1000
    assert deadline_of(client, "plain") is None
    assert client.hget(KEYSPACE.values, "order:cancel:SN1") == b"v1"


def test_a_new_ttl_replaces_the_deadline_and_persist_removes_it(
    client: redis.Redis, ledger: Ledger
) -> None:
    client.set("k", "v", ex=100)
    ledger.record([b"k"])
    client.expire("k", 500)
    ledger.record([b"k"])
    assert abs((deadline_of(client, "k") or 0) - (now_ms(client) + 500_000)) < 1000
    client.persist("k")
    ledger.record([b"k"])
    assert deadline_of(client, "k") is None


def claim(ledger: Ledger, *keys: bytes, fresh_ms: int | None = None) -> list[str | None]:
    """What `expired` events for `keys` queue, in one window: each job id, or None."""
    replies = ledger.apply([Step(Op.CLAIM, key, fresh_ms=fresh_ms) for key in keys]).replies
    return [str(reply) if reply else None for reply in replies]


def forget(ledger: Ledger, *keys: bytes) -> None:
    ledger.apply([Step(Op.FORGET, key) for key in keys])


def test_forget_drops_deadline_and_value(client: redis.Redis, ledger: Ledger) -> None:
    client.set("k", "v", ex=100)
    ledger.record([b"k"])
    forget(ledger, b"k")
    assert deadline_of(client, "k") is None
    assert client.hget(KEYSPACE.values, "k") is None


def job(client: redis.Redis, job_id: str | None) -> Job:
    assert job_id is not None
    record = client.hget(KEYSPACE.jobs, job_id)
    assert record is not None
    return Job.unpack(job_id, record)


def test_an_expiry_is_claimed_once_and_queued_with_its_value(
    client: redis.Redis, ledger: Ledger
) -> None:
    client.set("k", "v", px=100)
    ledger.record([b"k"])
    time.sleep(0.2)
    assert client.exists("k") == 0
    queued = job(client, claim(ledger, b"k")[0])
    assert queued.key == b"k"
    assert queued.source is Source.EVENT
    assert queued.value == b"v"
    assert queued.deadline_ms is not None and queued.deadline_ms <= now_ms(client)
    assert client.zscore(KEYSPACE.ready, queued.id) is not None
    assert client.hget(KEYSPACE.values, "k") is None
    assert claim(ledger, b"k")[0] is None


def test_an_unknown_key_is_claimed_once_without_a_deadline(
    client: redis.Redis, ledger: Ledger
) -> None:
    queued = job(client, claim(ledger, b"never-seen")[0])
    assert queued.deadline_ms is None and queued.value is None
    assert claim(ledger, b"never-seen")[0] is None


def test_a_key_set_again_after_its_claim_is_a_new_expiry(
    client: redis.Redis, ledger: Ledger
) -> None:
    first = claim(ledger, b"k")[0]
    client.set("k", "v2", px=50)
    ledger.record([b"k"])
    time.sleep(0.1)
    second = claim(ledger, b"k")[0]
    assert first and second and first != second


def test_a_stale_expired_event_leaves_the_new_incarnation_alone(
    client: redis.Redis, ledger: Ledger
) -> None:
    """A lagging daemon's `expired` for an old incarnation, heard after the key was set
    again: claimed once already, and the live deadline stays."""
    client.set("k", "v", px=30)
    ledger.record([b"k"])
    time.sleep(0.1)
    assert claim(ledger, b"k")[0] is not None
    client.set("k", "v2", ex=100)
    ledger.record([b"k"])
    assert claim(ledger, b"k") == [None]
    assert deadline_of(client, "k") is not None
    assert client.zcard(KEYSPACE.ready) == 1


def test_an_incarnation_over_before_it_was_recorded_is_not_taken_for_a_duplicate(
    client: redis.Redis, ledger: Ledger
) -> None:
    """Claimed a moment ago, set again, and expired before this daemon recorded it: the
    record finds it gone, and its expiry is new, in the same window or a later one."""
    assert claim(ledger, b"k")[0] is not None
    client.set("k", "v", px=1)
    time.sleep(0.05)
    applied = ledger.apply([Step(Op.RECORD, b"k"), Step(Op.CLAIM, b"k")])
    assert applied.replies[0] == -2 and applied.replies[1] != 0
    # The review's case: claimed, set again, gone before recorded, all in one window.
    client.set("k", "v", px=1)
    time.sleep(0.05)
    mixed = ledger.apply([Step(Op.CLAIM, b"k"), Step(Op.RECORD, b"k"), Step(Op.CLAIM, b"k")])
    assert mixed.replies[1] == -2 and mixed.replies[2] != 0
    client.set("k", "v", px=1)
    time.sleep(0.05)
    recorded = ledger.apply([Step(Op.RECORD, b"k")])
    # A claim made after the record counts against a copy of the same event. (A claim in
    # the record's own ms cannot be told from an older one; expiryd then runs the expiry
    # again rather than risk dropping it: at least once.)
    time.sleep(0.005)
    assert claim(ledger, b"k", fresh_ms=recorded.now_ms)[0] is not None
    assert claim(ledger, b"k", fresh_ms=recorded.now_ms) == [None]  # the same one again
    assert client.zcard(KEYSPACE.ready) == 4


def test_a_record_tried_again_on_a_key_gone_changes_nothing_and_counts_no_claim(
    client: redis.Redis, ledger: Ledger
) -> None:
    """Another daemon claimed the expiry (no deadline was recorded: its slot was being
    imported); this one's record tried again finds the key gone, in the same window as
    its own copy of the event: that copy is the same expiry, not a new one."""
    assert claim(ledger, b"k")[0] is not None
    applied = ledger.apply([Step(Op.RECORD_MOVED, b"k"), Step(Op.CLAIM, b"k")])
    assert applied.replies == [0, 0]
    client.set("k", "v", ex=100)
    assert ledger.apply([Step(Op.RECORD_MOVED, b"k")]).replies == [1]
    assert deadline_of(client, "k") is not None
    client.persist("k")
    assert ledger.apply([Step(Op.RECORD_MOVED, b"k")]).replies == [0]
    assert deadline_of(client, "k") is not None, "left to the persist's own event"
    assert client.zcard(KEYSPACE.ready) == 1


def test_a_key_restored_over_a_recorded_one_and_gone_before_its_deadline_is_queued_once(
    client: redis.Redis, ledger: Ledger
) -> None:
    """RESTORE ... REPLACE publishes `restore`, not `del`: the incarnation it replaced must
    not be recovered at its own deadline once the restored one has expired."""
    client.set("k", "v", px=1500)
    ledger.record([b"k"])
    client.restore("k", 50, client.dump("k"), replace=True)
    time.sleep(0.1)
    applied = ledger.apply([Step(Op.RECORD_MOVED, b"k"), Step(Op.CLAIM, b"k")])
    assert applied.replies[0] == 0 and applied.replies[1] != 0
    assert deadline_of(client, "k") is None
    assert client.zcard(KEYSPACE.ready) == 1


def test_a_hand_over_leaves_what_the_new_ledger_knows_of_a_key_as_it_is(
    client: redis.Redis, ledger: Ledger
) -> None:
    """A moved key's deadline on its new node may differ by a ms (MIGRATE carries the
    TTL): what the new ledger knows wins, or one expiry would get two ids."""
    other = Keyspace("other:", 0)
    past = now_ms(client) - 5000
    client.zadd(KEYSPACE.deadlines, {"claimed-there": past, "gone-there": past, "new": past})
    client.zadd(other.claimed, {"claimed-there": past + 10})  # heard there, no deadline
    client.zadd(other.gone, {"gone-there": past + 20})
    client.hset(other.gone_deadlines, "gone-there", past + 1)
    assert ledger.hand_over(lambda key: other) == 3
    assert client.zcard(KEYSPACE.deadlines) == 0
    assert client.zrange(other.deadlines, 0, -1) == [b"new"]
    assert client.hget(other.gone_deadlines, "gone-there") == str(past + 1).encode()


def test_a_key_found_gone_in_the_markers_own_ms_waits_for_the_next_marker(
    client: redis.Redis, ledger: Ledger
) -> None:
    """Another sweep in the marker's ms may have found a key gone after a DEL whose event
    comes after the marker: only what was found before the marker's ms is recovered."""
    client.set("k", "v", px=30)
    ledger.record([b"k"])
    time.sleep(0.1)
    ledger.sweep("me:")
    found = int(client.zscore(KEYSPACE.gone, "k") or 0)
    assert ledger.reconcile(found) == 0
    assert ledger.reconcile(found + 1) == 1


def test_an_expiry_has_the_same_id_however_often_it_is_claimed(
    client: redis.Redis, ledger: Ledger
) -> None:
    def claimed_id() -> str | None:
        client.flushdb()
        client.set("k", "v", pxat=4_102_444_800_000)  # 2100-01-01
        ledger.record([b"k"])
        client.pexpireat("k", 1)  # gone at once, the recorded deadline kept
        client.zadd(KEYSPACE.deadlines, {"k": 1_700_000_000_000})
        return claim(ledger, b"k")[0]

    first, again = claimed_id(), claimed_id()
    assert first == again and first is not None and len(first) == 32
    unrecorded = {claim(ledger, f"u{n}".encode())[0] for n in range(3)}
    assert len(unrecorded) == 3 and None not in unrecorded


def test_a_deleted_key_found_gone_by_a_sweep_is_never_recovered(
    client: redis.Redis, ledger: Ledger
) -> None:
    """DEL just before the deadline, its event applied after a sweep found the key gone."""
    client.set("k", "v", px=30)
    ledger.record([b"k"])
    client.delete("k")
    time.sleep(0.1)
    assert ledger.sweep("me:").gone == 1
    forget(ledger, b"k")
    assert ledger.reconcile(now_ms(client) + 1) == 0
    assert client.zcard(KEYSPACE.ready) == 0


def test_a_key_replaced_before_its_deadline_is_not_recovered_but_an_expired_one_is_claimed(
    client: redis.Redis, ledger: Ledger
) -> None:
    for key in ("replaced", "expired-and-set-again"):
        client.set(key, "v", px=30)
    ledger.record([b"replaced", b"expired-and-set-again"])
    time.sleep(0.1)
    for key in ("replaced", "expired-and-set-again"):
        client.set(key, "v2", ex=100)  # before the ledger heard of the new TTL
    assert ledger.sweep("me:").gone == 2
    assert deadline_of(client, "replaced") is not None
    nudged = claim(ledger, b"expired-and-set-again")[0]
    assert job(client, nudged).source is Source.NUDGE
    assert ledger.reconcile(now_ms(client) + 1) == 0
    assert client.zcard(KEYSPACE.ready) == 1


def test_one_window_of_mixed_events_is_applied_in_order(
    client: redis.Redis, ledger: Ledger
) -> None:
    client.set("a", "v", px=30)
    client.set("b", "v", ex=100)
    time.sleep(0.1)
    applied = ledger.apply(
        [
            Step(Op.RECORD, b"b"),
            Step(Op.FORGET, b"b"),
            Step(Op.RECORD, b"a"),
            Step(Op.CLAIM, b"a"),
            Step(Op.CLAIM, b"a"),
        ]
    )
    assert applied.replies[:3] == [1, 0, -2]
    assert applied.replies[3] != 0 and applied.replies[4] == 0
    assert deadline_of(client, "b") is None


def test_sweep_expires_due_keys_and_publishes_a_marker_after_their_events(
    client: redis.Redis, ledger: Ledger
) -> None:
    pubsub = client.pubsub()
    pubsub.subscribe("__keyevent@15__:expired", KEYSPACE.sweep_channel)
    client.set("due", "v", px=30)
    client.set("later", "v", ex=100)
    ledger.record([b"due", b"later"])
    client.config_set("hz", 1)  # keep Redis's own expiry cycle out of the way
    try:
        time.sleep(0.1)
        result = ledger.sweep("me:")
    finally:
        client.config_set("hz", 10)
    assert (result.due, result.gone) == (1, 1)
    messages = [pubsub.get_message(timeout=1) for _ in range(4)]
    data = [m["data"] for m in messages if m and m["type"] == "message"]
    assert data[0] == b"due"
    assert data[1].startswith(b"me:")
    assert client.zscore(KEYSPACE.gone, "due") is not None
    assert deadline_of(client, "later") is not None
    pubsub.close()


def test_an_announced_key_found_gone_is_claimed_as_a_nudge(
    client: redis.Redis, ledger: Ledger
) -> None:
    client.set("k", "v", px=30)
    ledger.record([b"k"])
    time.sleep(0.1)
    ledger.sweep("me:")
    assert job(client, claim(ledger, b"k")[0]).source is Source.NUDGE
    assert ledger.reconcile(now_ms(client)) == 0


def test_reconcile_recovers_keys_whose_expiry_nobody_claimed(
    client: redis.Redis, ledger: Ledger
) -> None:
    for n in range(5):
        client.set(f"k{n}", f"v{n}", px=30)
    ledger.record([f"k{n}".encode() for n in range(5)])
    time.sleep(0.1)
    ledger.sweep("me:")
    found_until = now_ms(client) + 1
    claim(ledger, b"k0")
    client.set("k1", "back", ex=100)
    assert ledger.reconcile(found_until, limit=2) == 3
    ready = [job(client, i.decode()) for i in client.zrange(KEYSPACE.ready, 0, -1)]
    recovered = {j.key: j for j in ready if j.source is Source.RECOVERY}
    assert set(recovered) == {b"k2", b"k3", b"k4"}
    assert all(j.deadline_ms for j in recovered.values())
    assert recovered[b"k3"].value == b"v3"
    assert claim(ledger, b"k3")[0] is None
    assert client.zcard(KEYSPACE.gone) == 0


def test_scan_records_every_key_with_a_ttl(client: redis.Redis, ledger: Ledger) -> None:
    with client.pipeline(transaction=False) as pipe:
        for n in range(2500):
            pipe.set(f"order:cancel:{n}", "v", ex=1000)
        pipe.set("no-ttl", "v")
        pipe.set("expiryd:own", "v", ex=1000)
        pipe.execute()
    assert ledger.scan(KeyFilter(KEYSPACE.prefix.encode(), 1024)) == 2500
    assert client.zcard(KEYSPACE.deadlines) == 2500


def test_claims_in_one_round_trip_keep_their_order_and_win_once(
    client: redis.Redis, ledger: Ledger
) -> None:
    client.set("a", "va", px=20)
    ledger.record([b"a"])
    time.sleep(0.1)
    first, second, again = claim(ledger, b"a", b"b", b"a")
    assert again is None
    assert (job(client, first).key, job(client, second).key) == (b"a", b"b")
    assert job(client, first).value == b"va"


def test_a_key_deleted_unheard_before_its_deadline_is_forgotten_after_the_gap(
    client: redis.Redis, ledger: Ledger
) -> None:
    for n in range(5):
        client.set(f"t:{n}", "v", ex=100)
    client.set("t:due", "v", px=50)
    ledger.record([f"t:{n}".encode() for n in range(5)] + [b"t:due"])
    client.delete("t:1")  # deleted, persisted, renamed while nobody listened
    client.persist("t:2")
    client.rename("t:3", "t:moved")
    time.sleep(0.1)  # t:due expired: that is the sweep's and reconcile's to recover
    assert ledger.forget_deleted(limit=2) == 3  # in chunks smaller than the ledger
    kept = {key.decode() for key in client.zrange(KEYSPACE.deadlines, 0, -1)}
    assert kept == {"t:0", "t:4", "t:due"}
    assert client.hkeys(KEYSPACE.values) and b"t:1" not in client.hkeys(KEYSPACE.values)
    assert ledger.forget_deleted() == 0


def test_forgetting_pages_on_while_events_change_the_ledger(
    client: redis.Redis, ledger: Ledger
) -> None:
    keys = [f"p:{n}" for n in range(10)]
    for n, key in enumerate(keys):
        client.set(key, "v", px=100_000 + n * 1000)
    client.set("p:same-ms-a", "v", pxat=now_ms(client) + 105_000)  # ties across a page
    client.set("p:same-ms-b", "v", pxat=now_ms(client) + 105_000)
    ledger.record([k.encode() for k in [*keys, "p:same-ms-a", "p:same-ms-b"]])
    client.delete(*keys[1:], "p:same-ms-a", "p:same-ms-b")  # nine, and both ties

    pages = 0

    def between_pages() -> None:  # the dispatcher applying a `del` event meanwhile
        nonlocal pages
        pages += 1
        if pages == 2:  # p:0, kept by the first page, now paid and its timer cleared
            client.delete("p:0")
            ledger.apply([Step(Op.FORGET, b"p:0")])

    assert ledger.forget_deleted(between_pages, limit=3) == 11
    assert pages > 2
    assert client.zcard(KEYSPACE.deadlines) == 0

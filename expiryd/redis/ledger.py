"""The ledger: every watched key's deadline, kept in Redis so that expiryd, not Redis's
expiry sampling or a pub/sub connection, decides when an expiry is due and whether it
was seen.

An expiry's identity is its incarnation: the key and the deadline it had. How the pieces
fit (the scripts are in `expiryd/redis/lua/`):
- `apply` takes a window of keyspace events in the order Redis published them. A key
  that got a TTL is recorded (deadline and, with capture_values, value); a key that left
  without expiring (del, persist, rename, move) is forgotten, wherever it stood; an
  `expired` event claims the incarnation it is for and, in the same script, queues it as
  a durable job (see `queue`). An event for an incarnation claimed already is dropped.
- `sweep`, run every few milliseconds, reads the expiry time of each key whose deadline has
  passed. Reading an expired key makes Redis delete it and publish `expired` at once (the
  nudge). Incarnations found over move to the `gone` set, and a marker follows the
  events the sweep caused (see `markers`).
- Once the marker is heard, whatever is still in `gone` up to its time expired while
  nobody listened: `reconcile` claims and queues it as recovered.
- After every (re)subscribe, `scan` records the TTLs set while nobody listened, and
  `forget_deleted` drops the incarnations whose key left before its deadline (a DEL
  nobody heard): they will never expire.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import redis

from expiryd import defaults
from expiryd.liveness import Beat, no_beat
from expiryd.redis import lua
from expiryd.redis.keyfilter import KeyFilter
from expiryd.redis.keyspace import Keyspace


class Op(enum.StrEnum):
    RECORD = "r"
    FORGET = "f"
    CLAIM = "c"


@dataclass(frozen=True)
class Step:
    """One event's change to the ledger."""

    op: Op
    key: bytes
    fresh_ms: int | None = None
    """For a claim: when this daemon found a newer incarnation of the key already over,
    so that an older claim of the key is not taken for this one."""
    random_id: str = ""
    """For a claim of an expiry whose deadline nobody recorded: its id, drawn once per
    step, so that a window tried again queues the same job."""

    def __post_init__(self) -> None:
        if self.op is Op.CLAIM and not self.random_id:
            object.__setattr__(self, "random_id", os.urandom(16).hex())

    def args(self) -> list[bytes | str | int]:
        if self.op is not Op.CLAIM:
            return [self.op.value, self.key]
        fresh = "" if self.fresh_ms is None else self.fresh_ms
        return [self.op.value, self.key, fresh, self.random_id]


@dataclass(frozen=True)
class Applied:
    now_ms: int
    oversize_values: int
    replies: list[int | str]
    """One per step: record 1, 0 or -2 (gone already); forget 0; claim the job id or 0."""


@dataclass(frozen=True)
class SweepResult:
    due: int
    gone: int
    marker_ms: int | None = None
    """The time of the marker the sweep published, if it published one."""


class Ledger:
    def __init__(
        self,
        client: redis.Redis,
        keyspace: Keyspace,
        capture_values: bool = defaults.CAPTURE_VALUES,
        max_value_bytes: int = defaults.MAX_VALUE_BYTES,
        claims_kept_seconds: int = defaults.CLAIMS_KEPT_SECONDS,
        scanned: redis.Redis | None = None,
        elsewhere: Callable[[bytes], Keyspace | None] | None = None,
    ) -> None:
        """In a cluster: `scanned`, the node whose keys `scan` reads (`client` is the
        cluster's); `elsewhere`, the ledger of the shard that serves a key now, to hand
        over the entries of keys that resharding moved away (see `lua/here.lua`)."""
        self.client = client
        self.scanned = scanned or client
        self.elsewhere = elsewhere
        self.keyspace = keyspace
        self.capture_values = capture_values
        self.max_value_bytes = max_value_bytes
        self._keep_ms = claims_kept_seconds * 1000
        ks = keyspace
        self._keys = [
            ks.deadlines, ks.gone, ks.gone_deadlines, ks.values, ks.claimed, ks.ready, ks.jobs
        ]  # fmt: skip
        self._apply = lua.register(client, "ledger_apply", *lua.ENQUEUE, "here")
        self._reconcile = lua.register(client, "ledger_reconcile", *lua.ENQUEUE)
        self._sweep = lua.register(client, "ledger_sweep", "clock", "here")
        self._forget_deleted = lua.register(client, "ledger_forget_deleted", "clock", "here")

    def apply(self, steps: Sequence[Step]) -> Applied:
        """Apply the steps in order, in one round trip."""
        capture = "1" if self.capture_values else "0"
        args: list[bytes | str | int] = [capture, self.max_value_bytes, self._keep_ms]
        for step in steps:
            args += step.args()
        now, oversize, *replies = self._apply(keys=self._keys, args=args)
        return Applied(int(now), int(oversize), [_reply(r) for r in replies])

    def record(self, keys: Sequence[bytes]) -> int:
        """Store the deadline of each key that has a TTL; the number recorded."""
        if not keys:
            return 0
        applied = self.apply([Step(Op.RECORD, key) for key in keys])
        return sum(1 for reply in applied.replies if reply == 1)

    def reconcile(self, found_until_ms: int, limit: int = defaults.SWEEP_LIMIT) -> int:
        """Claim and queue every incarnation found gone up to `found_until_ms` whose expiry
        nobody announced; the number recovered."""
        recovered = 0
        while True:
            looked_at, queued = self._reconcile(keys=self._keys, args=[found_until_ms, limit])
            recovered += int(queued)
            if looked_at < limit:
                return recovered

    def sweep(self, marker_prefix: str, limit: int = defaults.SWEEP_LIMIT) -> SweepResult:
        """Look at every key whose deadline has passed (which makes Redis expire it now)."""
        ks = self.keyspace
        due, gone, marker, elsewhere = self._sweep(
            keys=[ks.deadlines, ks.gone, ks.gone_deadlines, ks.values],
            args=[limit, ks.sweep_channel, marker_prefix],
        )
        self.hand_over_keys(elsewhere)
        return SweepResult(int(due), int(gone), int(marker) or None)

    def forget_deleted(self, beat: Beat = no_beat, limit: int = defaults.SWEEP_LIMIT) -> int:
        """Forget every incarnation whose key left before its deadline without an event
        heard (deleted while expiryd was not listening); the number forgotten. Pages by
        deadline, so entries the dispatcher adds or removes meanwhile move no other."""
        ks, after, forgotten = self.keyspace, 0, 0
        while True:
            beat()
            looked_at, dropped, last, elsewhere = self._forget_deleted(
                keys=[ks.deadlines, ks.gone, ks.gone_deadlines, ks.values], args=[after, limit]
            )
            self.hand_over_keys(elsewhere)
            forgotten += int(dropped)
            if int(looked_at) < limit:
                return forgotten
            after = int(last)

    def size(self) -> int:
        """Deadlines and incarnations found gone that this ledger holds."""
        return int(self.client.zcard(self.keyspace.deadlines)) + int(
            self.client.zcard(self.keyspace.gone)
        )

    def hand_over_keys(self, keys: Sequence[bytes]) -> int:
        """Hand these keys' deadlines over to the shards `elsewhere` names (see `__init__`);
        the number moved."""
        if not keys or self.elsewhere is None:
            return 0
        ks = self.keyspace
        scores = self.client.zmscore(ks.deadlines, list(keys))  # type: ignore[arg-type]
        entries = [(k, s) for k, s in zip(keys, scores, strict=True) if s is not None]
        return len(self._hand_over(entries, self.elsewhere, gone=False))

    def hand_over(self, to: Callable[[bytes], Keyspace | None], page: int = 1000) -> int:
        """Move every deadline, and every incarnation found gone, to the ledger `to` names
        for its key (in a cluster: the shard of the primary that serves its slot now),
        taking each out of this ledger; the number moved. For a shard that stopped
        listening. An entry with nowhere else to go stays."""
        ks, moved = self.keyspace, 0
        for name, gone in ((ks.deadlines, False), (ks.gone, True)):
            start = 0
            while True:
                entries: list[tuple[bytes, float]] = self.client.zrange(  # type: ignore[assignment]
                    name, start, start + page - 1, withscores=True
                )
                if not entries:
                    break
                handed = len(self._hand_over(entries, to, gone))
                moved += handed
                start += len(entries) - handed  # those that stayed
        # Entry by entry, not the whole keys: another daemon that has not seen the change
        # yet may still record here, and hands those over when it does.
        self.client.delete(ks.claimed)
        return moved

    def _hand_over(
        self, entries: list[tuple[bytes, float]], to: Callable[[bytes], Keyspace | None], gone: bool
    ) -> list[bytes]:
        """Copy the entries to their new ledgers, then take them out of this one; the keys
        handed over (not those `to` has no other ledger for)."""
        ks = self.keyspace
        kept = ks.gone_deadlines if gone else ks.values
        found: list[bytes | None] = self.client.hmget(kept, [key for key, _ in entries])  # type: ignore[assignment]
        handed = []
        with self.client.pipeline(transaction=False) as pipe:
            for (key, score), extra in zip(entries, found, strict=True):
                other = to(key)
                if other is None or other == ks or (gone and extra is None):
                    continue
                if not gone:
                    pipe.zadd(other.deadlines, {key: score}, nx=True)
                    if extra is not None:
                        pipe.hsetnx(other.values, key, extra)
                else:
                    pipe.zadd(other.gone, {key: score}, nx=True)
                    pipe.hsetnx(other.gone_deadlines, key, extra)  # type: ignore[arg-type]
                handed.append(key)
            pipe.execute()
        if handed:
            self.client.zrem(ks.gone if gone else ks.deadlines, *handed)
            self.client.hdel(kept, *handed)
        return handed

    def scan(self, keys: KeyFilter, beat: Beat = no_beat, count: int = defaults.SCAN_COUNT) -> int:
        """Record every key of the watched DB that has a TTL and that `keys` watches; the
        number recorded."""
        recorded = 0
        for batch in _batches(self.scanned.scan_iter(count=count), count):
            beat()
            recorded += self.record([k for k in batch if keys.watches(k)])
        return recorded


def _reply(reply: bytes | int) -> int | str:
    return reply.decode() if isinstance(reply, bytes) else int(reply)


def _batches(keys: Iterable[bytes], size: int) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    for key in keys:
        batch.append(key)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch

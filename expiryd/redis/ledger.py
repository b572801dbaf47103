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
from dataclasses import dataclass, field

import redis

from expiryd import defaults
from expiryd.liveness import Beat, no_beat
from expiryd.redis import lua
from expiryd.redis.keyfilter import KeyFilter
from expiryd.redis.keyspace import Keyspace

SKEW_MS = 2000
"""How far apart two nodes' clocks may be: a key whose deadline is nearer may have expired
on its node already."""


class Op(enum.StrEnum):
    RECORD = "r"
    RECORD_MOVED = "m"
    """A key that arrived with its TTL (a `restore`: moved from another node, the same
    incarnation), or whose record is tried again (see `cluster_events`): its deadline is
    recorded if it has one, and nothing else is inferred."""
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
    elsewhere: list[bytes] = field(default_factory=list)
    """Due keys served elsewhere now: to hand over once the marker is heard (see
    `lua/ledger_sweep.lua`)."""


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
        self._hand_in = lua.register(client, "ledger_hand_in")

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
        return SweepResult(int(due), int(gone), int(marker) or None, list(elsewhere))

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

    def hand_over_keys(
        self, keys: Sequence[bytes], to: Callable[[bytes], Keyspace | None] | None = None
    ) -> int:
        """Hand these keys' deadlines over to the shards `to` names (by default those
        `elsewhere` names, see `__init__`); the number taken out of this ledger."""
        to = to or self.elsewhere
        if not keys or to is None:
            return 0
        ks = self.keyspace
        scores = self.client.zmscore(ks.deadlines, list(keys))  # type: ignore[arg-type]
        entries = [(k, s) for k, s in zip(keys, scores, strict=True) if s is not None]
        return len(self._hand_over(entries, to, gone=False))

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
        taken out (not those `to` has no other ledger for). A new ledger that knows the
        key already keeps what it knows (see `lua/ledger_hand_in.lua`). A deadline still
        to come whose key exists nowhere was deleted (its `del` heard where the entry was
        not): it is dropped, not handed over, since its new shard would take it for
        expired."""
        ks = self.keyspace
        kept = ks.gone_deadlines if gone else ks.values
        deleted = set() if gone else self._deleted(entries)
        entries = [(key, score) for key, score in entries if key not in deleted]
        found: list[bytes | None] = (
            self.client.hmget(kept, [key for key, _ in entries]) if entries else []  # type: ignore[assignment]
        )
        handed = list(deleted)
        by_ledger: dict[Keyspace, list[bytes | str | float]] = {}
        for (key, score), extra in zip(entries, found, strict=True):
            other = to(key)
            if other is None or other == ks or (gone and extra is None):
                continue
            by_ledger.setdefault(other, []).extend((key, _ms(score), extra or ""))
            handed.append(key)
        for other, triples in by_ledger.items():
            into = [other.gone, other.gone_deadlines] if gone else [other.deadlines, other.values]
            self._hand_in(
                keys=[*into, other.claimed, other.gone],
                args=["gone" if gone else "deadlines", *triples],
            )
        if handed:
            self.client.zrem(ks.gone if gone else ks.deadlines, *handed)
            self.client.hdel(kept, *handed)
        return handed

    def _deleted(self, entries: list[tuple[bytes, float]]) -> set[bytes]:
        """Those of the entries whose deadline is more than `SKEW_MS` away and whose key
        exists on no node (the cluster client follows a slot being moved)."""
        seconds, micros = self.client.time()
        soon = seconds * 1000 + micros // 1000 + SKEW_MS
        ahead = [key for key, score in entries if score > soon]
        if not ahead:
            return set()
        with self.client.pipeline(transaction=False) as pipe:
            for key in ahead:
                pipe.exists(key)
            found = pipe.execute(raise_on_error=False)
        return {key for key, there in zip(ahead, found, strict=True) if there == 0}

    def scan(self, keys: KeyFilter, beat: Beat = no_beat, count: int = defaults.SCAN_COUNT) -> int:
        """Record every key of the watched DB that has a TTL and that `keys` watches; the
        number recorded."""
        recorded = 0
        for batch in _batches(self.scanned.scan_iter(count=count), count):
            beat()
            recorded += self.record([k for k in batch if keys.watches(k)])
        return recorded


def _ms(score: float) -> str:
    return f"{score:.0f}"


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

"""Which of a cluster shard's events the ledger must not take at their word.

A `del` event means "this key left before its deadline" on a primary that serves the
key. In a cluster two things break that, and both would lose expiries:
- `CLUSTER FAILOVER` demotes a primary without closing its subscribers, and from then on
  it copies its new primary's expiries as `del` events. So once the node is no longer a
  primary, a window's forgets are dropped; a real DEL among them is found by the rescan
  when the listener subscribes on the new primary (the cluster watch moves it there).
- Resharding moves a key with `MIGRATE`, which deletes it here (`del`) and restores it on
  its new node (`restore`). A key this node no longer serves (it answers MOVED or ASK)
  that exists on the node it names was moved: its deadline is handed over at once to the
  shard of that node, whose events (a DEL included) are about the key from then on. A
  node that has no shard yet (it is importing its first slot) gets it once it has one:
  the key is *parked* meanwhile, and looked at again every second. A key gone from its
  new node too whose deadline has passed moved, then expired there: its deadline goes
  over for recovery. One gone from both before its deadline was deleted.
And on the node importing a slot, a script cannot read a key of that slot until the slot
is the node's: a TTL set there meanwhile (a MIGRATE's `restore`, or a producer's SETEX
sent there by ASK) is recorded again later (see `importing`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis
from redis.exceptions import AskError, MovedError

from expiryd.logs import describe_error, get_logger
from expiryd.redis.keyspace import Keyspace
from expiryd.redis.ledger import Ledger, Op, Step
from expiryd.redis.nodes import Address

TEND_SECONDS = 1.0
PARKED_LIMIT = 100_000
"""Keys parked at most; more are left to the sweep, which hands each over at its deadline."""


@dataclass
class Placed:
    """Where keys this node no longer serves are now."""

    living: dict[bytes, Address] = field(default_factory=dict)
    """Those that exist on the node their redirect names: moved there."""
    over: set[bytes] = field(default_factory=set)
    """Those gone from there too whose deadline has passed: moved, then expired there."""
    deleted: set[bytes] = field(default_factory=set)
    """Those gone from both before their deadline."""


class ClusterEvents:
    def __init__(
        self,
        node: redis.Redis,
        ledger: Ledger,
        connect: Callable[[Address], redis.Redis],
        shard_at: Callable[[Address], Keyspace | None],
    ) -> None:
        self.node = node
        """A client of the node the shard's listener is on, that does not follow MOVED."""
        self.ledger = ledger
        self.connect = connect
        """A client of another node, to ask whether a key lives there now."""
        self.shard_at = shard_at
        """The keyspace of the shard of the primary at an address, if it has one."""
        self._parked: dict[bytes, None] = {}
        self._tended = 0.0
        self._on_replica = False
        self._unchecked = False
        self._log = get_logger()

    def vet(self, steps: list[Step]) -> list[Step]:
        forgets = [step.key for step in steps if step.op is Op.FORGET]
        if not forgets:
            return steps
        primary, placed = self._ask(forgets)
        if not primary:
            if not self._on_replica:  # once, until the cluster watch moves this shard
                self._on_replica = True
                self._log.warning("events.from_replica", forgets_dropped=len(forgets))
            return [step for step in steps if step.op is not Op.FORGET]
        self._on_replica = False
        self._hand_over(placed)
        moved = {*placed.living, *placed.over}
        return [step for step in steps if not (step.op is Op.FORGET and step.key in moved)]

    def tend(self) -> None:
        """Every second: hand over the deadlines of parked keys whose node has a shard
        now, and forget those deleted meanwhile. Never raises: a key stays parked until
        it can be looked at."""
        now = time.monotonic()
        if not self._parked or now - self._tended < TEND_SECONDS:
            return
        self._tended = now
        keys = list(self._parked)[:1000]
        try:
            primary, placed = self._ask(keys)
            if not primary:
                return
            for key in keys:
                del self._parked[key]
            try:
                self._hand_over(placed)
                if placed.deleted:
                    self.ledger.apply([Step(Op.FORGET, key) for key in sorted(placed.deleted)])
            except Exception:
                self._park(keys)  # those handed over already are no longer in the ledger
                raise
        except Exception as exc:  # parked keys wait; the dispatcher must go on
            self._log.warning("cluster.handover_failed", error=describe_error(exc))

    def importing(self, keys: list[bytes]) -> list[bytes]:
        """Those of `keys`, whose record met a slot this node does not serve, that live
        here all the same, in a slot this node is importing: the dispatcher records them
        again until the slot is the node's. The others are served by another node, whose
        shard heard of them."""
        with self.node.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.execute_command("ASKING")
                pipe.exists(key)
            replies = pipe.execute(raise_on_error=False)
        return [key for key, found in zip(keys, replies[1::2], strict=True) if found == 1]

    def _hand_over(self, placed: Placed) -> None:
        """Moved keys' deadlines to the shard of the node they live on; those whose node
        has no shard yet are parked. Expired ones to the shard serving their slot."""
        shards = {key: self.shard_at(address) for key, address in placed.living.items()}
        ready = sorted(key for key, shard in shards.items() if shard is not None)
        self.ledger.hand_over_keys(ready, to=shards.get)
        self._park([key for key, shard in shards.items() if shard is None])
        self.ledger.hand_over_keys(sorted(placed.over))

    def _park(self, keys: list[bytes]) -> None:
        room = max(0, PARKED_LIMIT - len(self._parked))
        self._parked.update(dict.fromkeys(keys[:room]))
        if len(keys) > room:
            self._log.warning(
                "cluster.handover_failed",
                error=f"{len(keys) - room} moved keys not kept for hand-over: "
                f"{PARKED_LIMIT} wait already; the sweep hands each over at its deadline",
            )

    def _ask(self, keys: list[bytes]) -> tuple[bool, Placed]:
        """Whether the node is a primary, and where those of `keys` it no longer serves
        are. A node that cannot say raises (the window waits, and is tried again), except
        for a Redis user that may not run ROLE: it is taken at its word, and told once."""
        with self.node.pipeline(transaction=False) as pipe:
            pipe.execute_command("ROLE")
            for key in keys:
                pipe.exists(key)
            role, *found = pipe.execute(raise_on_error=False)
        if isinstance(role, redis.exceptions.NoPermissionError):
            if not self._unchecked:
                self._unchecked = True
                self._log.warning("events.role_unchecked", error=describe_error(role))
        elif isinstance(role, Exception):
            raise role
        elif role[0] != b"master":
            return False, Placed()
        redirected = [(k, r) for k, r in zip(keys, found, strict=True) if isinstance(r, AskError)]
        living = self._living_elsewhere(redirected)
        rest = [k for k, _ in redirected if k not in living]
        over = self._over(rest)
        return True, Placed(living, over, set(rest) - over)

    def _over(self, keys: list[bytes]) -> set[bytes]:
        """Those of `keys`, gone from their new node too, whose deadline has passed: they
        moved, then expired there (maybe before that node's shard listened). A DEL
        comes before a deadline (a key past it is expired by any command that touches
        it), so these were not deleted, and their deadlines go over for recovery."""
        if not keys:
            return set()
        seconds, micros = self.node.time()
        now_ms = seconds * 1000 + micros // 1000
        deadlines = self.ledger.client.zmscore(self.ledger.keyspace.deadlines, keys)  # type: ignore[arg-type]
        return {k for k, d in zip(keys, deadlines, strict=True) if d is not None and d < now_ms}

    def _living_elsewhere(
        self, redirected: list[tuple[bytes, MovedError | AskError]]
    ) -> dict[bytes, Address]:
        """Those keys that exist on the node their redirect names, with that node. One
        that exists there neither (that node redirects too: a DEL sent to the node
        importing it) was deleted, and is forgotten as any other."""
        by_node: dict[Address, list[tuple[bytes, bool]]] = {}
        for key, redirect in redirected:
            # In redis-py a MOVED is an ASK too; only an ASK says the slot is on its way.
            importing = not isinstance(redirect, MovedError)
            by_node.setdefault(redirect.node_addr, []).append((key, importing))
        living: dict[bytes, Address] = {}
        for address, asked in by_node.items():
            client = self.connect(address)
            try:
                with client.pipeline(transaction=False) as pipe:
                    for key, importing in asked:
                        if importing:
                            pipe.execute_command("ASKING")
                        pipe.exists(key)
                    replies = iter(pipe.execute(raise_on_error=False))
                for key, importing in asked:
                    if importing:
                        next(replies)
                    if next(replies) == 1:
                        living[key] = address
            finally:
                client.close()
        return living

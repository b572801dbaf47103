"""Which of a cluster shard's events the ledger must not take at their word.

A `del` event means "this key left before its deadline" on a primary that serves the
key. In a cluster two things break that, and both would lose expiries:
- `CLUSTER FAILOVER` demotes a primary without closing its subscribers, and from then on
  it copies its new primary's expiries as `del` events. So once the node is no longer a
  primary, a window's forgets are dropped; a real DEL among them is found by the rescan
  when the listener subscribes on the new primary (the cluster watch moves it there).
- Resharding moves a key with `MIGRATE`, which deletes it here (`del`) and restores it on
  its new node (`restore`). Its deadline is handed over to that node's shard instead.
"""

from __future__ import annotations

import redis
from redis.exceptions import AskError, MovedError

from expiryd.logs import get_logger
from expiryd.redis.ledger import Ledger, Op, Step


class ClusterEvents:
    def __init__(self, node: redis.Redis, ledger: Ledger) -> None:
        self.node = node
        """A client of the node the shard's listener is on, that does not follow MOVED."""
        self.ledger = ledger
        self._on_replica = False
        self._log = get_logger()

    def vet(self, steps: list[Step]) -> list[Step]:
        forgets = [step.key for step in steps if step.op is Op.FORGET]
        if not forgets:
            return steps
        primary, moved = self._ask(forgets)
        if not primary:
            if not self._on_replica:  # once, until the cluster watch moves this shard
                self._on_replica = True
                self._log.warning("events.from_replica", forgets_dropped=len(forgets))
            return [step for step in steps if step.op is not Op.FORGET]
        self._on_replica = False
        if moved:
            self.ledger.hand_over_keys(sorted(moved))
        return [step for step in steps if not (step.op is Op.FORGET and step.key in moved)]

    def _ask(self, keys: list[bytes]) -> tuple[bool, set[bytes]]:
        """Whether the node is a primary (not when it cannot say), and which of `keys`
        another node serves now."""
        try:
            with self.node.pipeline(transaction=False) as pipe:
                pipe.execute_command("ROLE")
                for key in keys:
                    pipe.exists(key)
                role, *found = pipe.execute(raise_on_error=False)
        except (redis.RedisError, OSError):
            return False, set()
        if isinstance(role, Exception) or role[0] != b"master":
            return False, set()
        return True, {
            k for k, r in zip(keys, found, strict=True) if isinstance(r, MovedError | AskError)
        }

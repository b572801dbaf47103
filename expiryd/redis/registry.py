"""Who is running: each daemon writes a heartbeat into one hash every few seconds, saying
until when it counts as alive. `expiryd status` reads them; a daemon that is gone simply
stops counting once its heartbeat is past, and is cleared away an hour later."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
import redis

from expiryd.redis.keyspace import Keyspace

FORGET_AFTER_SECONDS = 3600
"""How long a stale heartbeat stays, to tell "stopped a while ago" from "never ran"."""


@dataclass(frozen=True)
class Heartbeat:
    daemon: str
    host: str
    pid: int
    version: str
    mode: str
    """"run" (listens and works) or "work" (works only)."""
    started_at: float
    beat_at: float
    alive_until: float
    subscribed: bool
    handled: dict[str, dict[str, int]] = field(default_factory=dict)
    """route -> outcome -> count, since the daemon started."""
    last_handled: float | None = None
    last_problem: dict[str, Any] | None = None
    """The last line the daemon logged at warning level or worse."""
    stalled: dict[str, float] = field(default_factory=dict)
    """loop -> seconds silent, for each of the daemon's loops overdue at this beat (none in
    a heartbeat written before it was added)."""

    def alive(self, now: float) -> bool:
        return self.alive_until > now

    @classmethod
    def parse(cls, raw: bytes | str) -> Heartbeat | None:
        """None for an entry this version cannot read (written by another version)."""
        try:
            return cls(**orjson.loads(raw))
        except (ValueError, TypeError):
            return None


class Registry:
    def __init__(self, client: redis.Redis, keyspace: Keyspace) -> None:
        self.client = client
        self.key = keyspace.daemons

    def write(self, heartbeat: Heartbeat) -> None:
        self.client.hset(self.key, heartbeat.daemon, orjson.dumps(asdict(heartbeat)))

    def heartbeats(self) -> list[Heartbeat]:
        entries = self.client.hgetall(self.key)
        found = (Heartbeat.parse(raw) for raw in entries.values())
        return sorted((h for h in found if h is not None), key=lambda h: h.started_at)

    def forget_stale(self, now: float | None = None) -> int:
        """Remove heartbeats past for over an hour; the number removed."""
        limit = (now or time.time()) - FORGET_AFTER_SECONDS
        stale = [h.daemon for h in self.heartbeats() if h.alive_until < limit]
        return int(self.client.hdel(self.key, *stale)) if stale else 0

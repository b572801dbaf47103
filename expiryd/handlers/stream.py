"""redis.stream: appends each expiry to a Redis Stream, for services in any language to
consume with consumer groups (XREADGROUP, XACK) instead of subscribing themselves.

An entry per attempt that reached Redis: a worker that dies after appending and before
settling has the expiry appended again when it is retried. Consumers tell the two apart
by `expiry_id`, which is the same on every attempt."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from expiryd.errors import ConfigError
from expiryd.expiry import Expiry
from expiryd.handlers import run_one
from expiryd.outcomes import Ending, Result
from expiryd.routes import Route

DEFAULT_MAXLEN = 100_000
"""Entries a stream keeps at least (trimmed approximately, MAXLEN ~, which is cheap)."""


@dataclass(frozen=True)
class StreamAppend:
    client: redis.Redis
    stream: str
    maxlen: int

    def __call__(self, expiry: Expiry) -> Result:
        return run_one(self, expiry)

    def run_many(self, expiries: Sequence[Expiry]) -> list[Ending]:
        """One round trip for the group; a connection error fails (and retries) it all."""
        with self.client.pipeline(transaction=False) as pipe:
            for expiry in expiries:
                pipe.xadd(self.stream, entry(expiry), maxlen=self.maxlen, approximate=True)
            replies = pipe.execute(raise_on_error=False)
        return [r if isinstance(r, BaseException) else Result.from_rows(1) for r in replies]


def entry(expiry: Expiry) -> dict[Any, Any]:
    """The stream entry: flat string fields, the pattern's own as one JSON object."""
    deadline_ms = None if expiry.deadline is None else int(expiry.deadline.timestamp() * 1000)
    fields: dict[Any, Any] = {
        "key": expiry.key,
        "route": expiry.route,
        "fields": orjson.dumps(expiry.fields).decode(),
        "expiry_id": expiry.id,
        "attempt": str(expiry.attempt),
        "deadline": expiry.deadline.isoformat(timespec="milliseconds") if expiry.deadline else "",
        "lateness_ms": "" if deadline_ms is None else str(int(time.time() * 1000) - deadline_ms),
    }
    if expiry.value is not None:
        fields["value"] = expiry.value
    return fields


def build(route: Route, client: redis.Redis, prefix: str) -> StreamAppend:
    unknown = set(route.options) - {"stream", "maxlen"}
    if unknown:
        raise ConfigError(f"unknown setting {sorted(unknown)[0]!r} for handler 'redis.stream'")
    stream = route.options.get("stream", f"{prefix}expired")
    maxlen = route.options.get("maxlen", DEFAULT_MAXLEN)
    if not isinstance(stream, str) or not stream:
        raise ConfigError('stream: a key name, e.g. stream = "expiryd:expired"')
    if not isinstance(maxlen, int) or isinstance(maxlen, bool) or maxlen < 1:
        raise ConfigError("maxlen: a whole number of entries, at least 1")
    return StreamAppend(client, stream, maxlen)

"""SIGHUP: read the config again and, when it changed and the new one is sound, apply it
in place, between batches: routes, handlers, the database engine, the worker settings
and the metrics address change; the listener never unsubscribes, so nothing that
expires meanwhile goes unheard, and no signal has a new process to miss.

Handlers are built in this very process, as they will run: a missing table or a handler
that cannot be imported refuses the reload and the daemon keeps the config it has. Code
is not reloaded: a module already imported stays as it was loaded (a restart loads it
anew), and a module changed on disk since is warned of.

The [redis] settings change only on a restart. A new [redis] section is refused, saying
whether it names the same Redis server and DB (then a restart is safe) or another one
(then the queue must be drained first): that is found out by a probe key written through
the running connection and read through the new URL, not from the URL's spelling."""

from __future__ import annotations

import dataclasses
import os
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from expiryd.config import Config
from expiryd.errors import UserError
from expiryd.logs import describe_error
from expiryd.redact import scrub
from expiryd.redis.connections import CONNECTION_ERRORS, RedisTarget
from expiryd.redis.keyspace import Keyspace

PROBE_MS = 10_000
"""How long a probe key lives if the probe cannot delete it."""


@dataclass(frozen=True)
class Verdict:
    """Whether to apply `config`; the event to log about it, and its fields."""

    apply: bool
    event: str
    fields: dict[str, Any]
    config: Config | None = None


def judge(
    current: Config, load: Callable[[], Config], same_redis: Callable[[Config], bool | None]
) -> Verdict:
    """Whether to apply the config `load` reads now. `same_redis` tells whether the new
    [redis] url reaches the server and DB expiryd runs on (None: it could not tell)."""
    try:
        new = load()
    except UserError as exc:
        return Verdict(False, "config.reload_failed", {"error": scrub(str(exc))})
    except Exception as exc:  # whatever else reading it met: refused all the same
        return Verdict(False, "config.reload_failed", {"error": describe_error(exc)})
    changed = changed_sections(current, new)
    if not changed:
        return Verdict(False, "config.unchanged", {})
    if "redis" in changed:
        error = _redis_change(current, new, same_redis)
        return Verdict(False, "config.reload_refused", {"changed": changed, "error": error})
    return Verdict(True, "config.reloaded", {"changed": changed}, new)


def changed_sections(current: Config, new: Config) -> list[str]:
    """The settings that differ, route options included (`asdict` keeps every field,
    also those left out of the dataclasses' equality)."""
    before, after = dataclasses.asdict(current), dataclasses.asdict(new)
    return sorted(name for name in after if name != "source" and after[name] != before[name])


def _redis_change(current: Config, new: Config, same_redis: Callable[[Config], bool | None]) -> str:
    if new.redis.prefix != current.redis.prefix:
        return (
            "[redis] prefix cannot change on reload: jobs queued under the old one would "
            "wait; drain the queue (expiryd status), then restart on the new config"
        )
    same = same_redis(new)
    if same is False:
        return (
            "[redis] url reaches another Redis server or DB: jobs queued in this one would "
            "wait; drain it (expiryd status), then restart on the new config"
        )
    where = "the same Redis server and DB" if same else "a Redis that does not answer now"
    return (
        f"[redis] settings change only on a restart (the new url reaches {where}); "
        "a reload never stops listening. Restart to apply them"
    )


def probe_same_redis(client: redis.Redis, keyspace: Keyspace, url: str) -> bool | None:
    """Whether `url` reaches the server and DB `client` is connected to: a key written
    through one and read through the other. None when either side does not answer."""
    key, token = f"{keyspace.prefix}reload-probe:{uuid.uuid4().hex}", uuid.uuid4().hex
    other = RedisTarget.from_url(url).client(socket_connect_timeout=2, socket_timeout=2)
    try:
        client.set(key, token, px=PROBE_MS)
        try:
            return other.get(key) == token.encode()
        finally:
            client.delete(key)
    except (redis.RedisError, *CONNECTION_ERRORS):
        return None
    finally:
        other.close()


class CodeWatch:
    """The files of the `module:function` handlers' modules, as they were when loaded:
    the running daemon keeps the code it loaded, however the files change later."""

    def __init__(self) -> None:
        self._loaded: dict[str, float] = {}
        """Module name -> its file's mtime when first seen loaded."""

    def note(self, config: Config) -> None:
        """Remember the modules the config's handlers loaded that are not known yet."""
        for name, mtime in _handler_modules(config):
            self._loaded.setdefault(name, mtime)

    def changed(self, config: Config) -> list[str]:
        """The config's handler modules whose file changed on disk since it was loaded."""
        return [
            name
            for name, mtime in _handler_modules(config)
            if name in self._loaded and mtime > self._loaded[name]
        ]


def _handler_modules(config: Config) -> list[tuple[str, float]]:
    """(name, mtime) of each loaded module of the config's `module:function` handlers."""
    found = []
    for name in sorted({r.handler.partition(":")[0] for r in config.routes if ":" in r.handler}):
        path = getattr(sys.modules.get(name), "__file__", None)
        try:
            if path:
                found.append((name, os.stat(path).st_mtime))
        except OSError:
            continue
    return found

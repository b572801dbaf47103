"""SIGHUP: read the config again and, when it changed and the new one is sound, restart
in place on it: the daemon stops as on SIGTERM (the batch in hand finished, nothing
taken that is not settled), then executes itself again with the same command line and
process id. What expires meanwhile is in Redis and is handled after the restart, once.

A config that does not load, names a table that is not there, or moves expiryd's state
(another prefix or another Redis DB) is refused in one log line, and the daemon keeps
running on the one it has."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from expiryd.config import Config
from expiryd.errors import UserError
from expiryd.logs import describe_error
from expiryd.redact import scrub
from expiryd.redis.connections import RedisTarget


@dataclass(frozen=True)
class Verdict:
    restart: bool
    event: str
    fields: dict[str, Any]


def judge(current: Config, load: Callable[[], Config], check: Callable[[Config], None]) -> Verdict:
    """Whether to restart on the config `load` reads now; `check` raises a UserError for a
    config whose handlers cannot be built (a missing table, say)."""
    try:
        new = load()
    except UserError as exc:
        return Verdict(False, "config.reload_failed", {"error": scrub(str(exc))})
    except Exception as exc:  # whatever else reading it met: refused all the same
        return Verdict(False, "config.reload_failed", {"error": describe_error(exc)})
    changed = changed_sections(current, new)
    if not changed:
        return Verdict(False, "config.unchanged", {})
    moved = _moved_state(current, new)
    if moved:
        return Verdict(False, "config.reload_refused", {"changed": changed, "error": moved})
    try:
        check(new)
    except UserError as exc:
        error = scrub(str(exc))
        return Verdict(False, "config.reload_failed", {"changed": changed, "error": error})
    except Exception as exc:  # the database unreachable, say: refused all the same
        error = describe_error(exc)
        return Verdict(False, "config.reload_failed", {"changed": changed, "error": error})
    return Verdict(True, "config.reloading", {"changed": changed})


def changed_sections(current: Config, new: Config) -> list[str]:
    """The settings that differ, route options included (`asdict` keeps every field,
    also those left out of the dataclasses' equality)."""
    before, after = dataclasses.asdict(current), dataclasses.asdict(new)
    return sorted(name for name in after if name != "source" and after[name] != before[name])


def _moved_state(current: Config, new: Config) -> str | None:
    """Why the new config would leave expiryd's queue and ledger behind, if it would."""
    if new.redis.prefix != current.redis.prefix:
        return "[redis] prefix cannot change on reload: jobs queued under the old one would wait"
    old_db, new_db = RedisTarget.from_url(current.redis.url), RedisTarget.from_url(new.redis.url)
    if (old_db.host, old_db.port, old_db.db) != (new_db.host, new_db.port, new_db.db):
        return "another Redis or DB: drain this one, then restart on the new config"
    return None

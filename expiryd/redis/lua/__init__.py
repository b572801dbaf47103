"""expiryd's Lua scripts, kept as .lua files beside this module and loaded once.

Every script takes expiryd's own keys in KEYS and the watched keys' names in ARGV, so a
Redis user that may only read the watched keys can run them. A script names the shared
helpers it needs; they are put in front of it, in the order given.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

import redis
from redis.commands.core import Script

JOBS = ("clock", "batch", "jobs")
"""The helpers of every script that reads or writes jobs."""
ENQUEUE = (*JOBS, "enqueue")
"""The helpers of every script that queues jobs."""


@cache
def source(name: str, *helpers: str) -> str:
    parts = [*helpers, name]
    return "\n".join(
        resources.files(__name__).joinpath(f"{part}.lua").read_text() for part in parts
    )


def register(client: redis.Redis, name: str, *helpers: str) -> Script:
    return client.register_script(source(name, *helpers))

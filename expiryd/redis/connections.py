"""Redis connections and the server settings expiryd depends on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from expiryd import defaults
from expiryd.errors import ServiceError
from expiryd.redact import redact_url
from expiryd.redis.cluster import SCHEMES as CLUSTER_SCHEMES
from expiryd.redis.cluster import ClusterSeeds
from expiryd.redis.nodes import Address
from expiryd.redis.sentinel import SCHEMES as SENTINEL_SCHEMES
from expiryd.redis.sentinel import SentinelGroup

CONNECTION_ERRORS = (
    redis.ConnectionError,
    redis.TimeoutError,
    OSError,
    # A cluster failing a primary over, or moving a slot: gone once it is done.
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.SlotNotCoveredError,
)


UNSAFE_EVICTION = ("allkeys-lru", "allkeys-lfu", "allkeys-random")
"""maxmemory-policy values under which Redis may evict expiryd's own state."""


@dataclass(frozen=True)
class RedisTarget:
    """The Redis expiryd works on: one server, the primary of a Sentinel `group`, or a
    `cluster`."""

    url: str = field(repr=False)
    db: int
    host: str
    port: int | None
    group: SentinelGroup | None = None
    cluster: ClusterSeeds | None = None

    @classmethod
    def from_url(cls, url: str) -> RedisTarget:
        scheme = url.partition("://")[0]
        if scheme in SENTINEL_SCHEMES:
            group = SentinelGroup.from_url(url)
            return cls(url, group.db, "", None, group)
        if scheme in CLUSTER_SCHEMES:
            return cls(url, 0, "", None, cluster=ClusterSeeds.from_url(url))
        kwargs = redis.ConnectionPool.from_url(url).connection_kwargs
        return cls(
            url, int(kwargs.get("db") or 0), kwargs.get("host", "localhost"), kwargs.get("port")
        )

    @property
    def safe_url(self) -> str:
        return redact_url(self.url)

    def keyevent_channel(self, event: str) -> str:
        return f"__keyevent@{self.db}__:{event}"

    def client(self, **options: Any) -> redis.Redis:
        """A client that raises on a lost connection instead of reconnecting silently, so
        the caller always knows when it was cut off."""
        settings: dict[str, Any] = {
            "socket_connect_timeout": 5,
            "socket_timeout": 10,
            "socket_keepalive": True,
            "retry": Retry(NoBackoff(), 0),
        }
        if self.group is not None:
            return self.group.primary_client(settings | options)
        if self.cluster is not None:
            # It follows MOVED replies and failovers itself, and takes the same commands
            # on keys: expiryd's code uses it as a client of one Redis.
            cluster = self.cluster.client(**({"retry": None} | settings | options))
            return cast(redis.Redis, cluster)
        return redis.Redis.from_url(self.url, **(settings | options))

    def node_client(self, node: Address, **options: Any) -> redis.Redis:
        """A client of one node of the Sentinel group or cluster, whatever its role."""
        settings: dict[str, Any] = {"socket_connect_timeout": 5, "socket_timeout": 10}
        if self.cluster is not None:
            return self.cluster.node_client(node, **(settings | options))
        assert self.group is not None
        return self.group.node_client(node, **(settings | options))

    def node_target(self, node: Address) -> RedisTarget:
        """One node of a cluster, as a Redis of its own (DB 0)."""
        assert self.cluster is not None
        scheme, _, rest = self.url.partition("://")
        userinfo, at, _ = rest.partition("?")[0].rpartition("@")
        query = rest.partition("?")[2]
        plain = "rediss" if scheme.startswith("rediss") else "redis"
        host = f"[{node[0]}]" if ":" in node[0] else node[0]
        url = f"{plain}://{userinfo}{at}{host}:{node[1]}/0" + (f"?{query}" if query else "")
        return RedisTarget.from_url(url)

    def cli_command(self, *words: str, node: Address | None = None) -> str:
        host, port = node or (self.host, self.port)
        where = f"-h {host} -p {port}" if port else ""
        return " ".join(part for part in ("redis-cli", where, *words) if part)

    def describe(self, node: Address | None = None) -> str:
        """Where this is, for a message; with `node`, that node of the group."""
        if node is None:
            return self.safe_url
        return f"{node[0]}:{node[1]} of {self.safe_url}"


def nodes_of(target: RedisTarget) -> list[tuple[str, Address]]:
    """Every node of a Sentinel group or a cluster, primaries first, with its role: each
    keeps its own notification flags, and a replica may be promoted at any time."""
    if target.group is not None:
        primary, replicas = target.group.nodes()
        return [("primary", primary), *(("replica", replica) for replica in replicas)]
    if target.cluster is not None:
        primaries = target.cluster.topology().primaries
        return [
            *(("primary", p.address) for p in primaries),
            *(("replica", r) for p in primaries for r in p.replicas),
        ]
    return []


def eviction_problem(client: redis.Redis) -> str | None:
    """Why Redis might evict expiryd's ledger and jobs, with the fix; None when it won't.
    A server that does not let us read the policy is reported too."""
    try:
        reply: dict[Any, Any] = client.config_get("maxmemory-policy")
    except redis.exceptions.NoPermissionError:
        return None  # an ACL user without CONFIG GET: `redis.unverified` says so
    except redis.ResponseError as exc:
        return f"cannot read maxmemory-policy ({exc}); make sure it is noeviction or volatile-*"
    policy = reply.get("maxmemory-policy", reply.get(b"maxmemory-policy", b""))
    policy = policy.decode() if isinstance(policy, bytes) else str(policy)
    if policy not in UNSAFE_EVICTION:
        return None
    return (
        f"maxmemory-policy is {policy}: when Redis is full it may evict expiryd's ledger and "
        "jobs, losing expiries. Run: CONFIG SET maxmemory-policy noeviction (or a volatile-* "
        "policy) and put it in redis.conf"
    )


def warn_eviction(target: RedisTarget, client: redis.Redis, log: Any) -> None:
    problem = eviction_problem(client)
    if problem:
        log.warning("redis.eviction_unsafe", redis=target.safe_url, error=problem)


def missing_flags(current: str, required: str = defaults.NOTIFY_FLAGS) -> str:
    """The notify-keyspace-events classes that `required` has and `current` lacks."""
    have = set(current)
    if "A" in have:
        have |= set("g$lshzxetd")
    return "".join(flag for flag in required if flag not in have)


def read_notify_flags(client: redis.Redis) -> str:
    reply: dict[Any, Any] = client.config_get("notify-keyspace-events")
    value = reply.get("notify-keyspace-events", reply.get(b"notify-keyspace-events", ""))
    return value.decode() if isinstance(value, bytes) else str(value)


def ensure_notifications(
    target: RedisTarget, client: redis.Redis, configure: bool, node: Address | None = None
) -> str | None:
    """Check (or with `configure`, set) notify-keyspace-events; return the flags in force,
    or None when this Redis user may not read them (an ACL user without CONFIG GET).
    `node`: the node of a Sentinel group that `client` is on, for the messages."""
    try:
        current = read_notify_flags(client)
    except redis.exceptions.NoPermissionError:
        return None
    except redis.ResponseError as exc:
        raise ServiceError(
            f"cannot read notify-keyspace-events from {target.describe(node)} ({exc}); "
            f"make sure redis.conf has: notify-keyspace-events {defaults.NOTIFY_FLAGS}"
        ) from None
    missing = missing_flags(current)
    if not missing:
        return current
    wanted = current + missing
    if configure:
        client.config_set("notify-keyspace-events", wanted)
        return wanted
    raise ServiceError(
        f"Redis at {target.describe(node)} has notify-keyspace-events {current!r} and expiryd "
        f"needs {defaults.NOTIFY_FLAGS!r}. Run: "
        f"{target.cli_command('CONFIG SET notify-keyspace-events', wanted, node=node)} "
        f"and put this line in redis.conf: notify-keyspace-events {wanted} "
        "(or start with: expiryd run --configure-redis)"
    )

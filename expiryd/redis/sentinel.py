"""A Redis primary found through Sentinel, and followed when it changes.

`SentinelGroup` is what a `redis+sentinel://` URL names: the sentinels to ask, the
service (master name) they watch, and how to reach the data nodes. Its clients ask the
sentinels for the primary on every new connection (redis-py's `SentinelConnectionPool`),
so a component that lost its connection reconnects to the current primary.

What redis-py does not do is notice a primary demoted under a connection that stays open,
above all the listener's subscription, which hears nothing from a replica (replicas
never emit `expired`). `PrimaryWatch` does: it listens for the sentinels' `+switch-master`
and, every `FOLLOW_CHECK_SECONDS`, asks them where the primary is and asks the node the
listener is on for its `ROLE`. Any disagreement moves the daemon to the new primary.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import redis
import redis.sentinel

from expiryd.component import Component
from expiryd.liveness import Beat, no_beat
from expiryd.logs import describe_error, get_logger
from expiryd.redis.nodes import Address, NodesUrl, NodeUrlError, node_options, normal_address

SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}
"""URL scheme -> whether data nodes and sentinels are reached over TLS."""

DEFAULT_SENTINEL_PORT = 26379
FOLLOW_CHECK_SECONDS = 1.0
"""How often the primary's address and role are checked, besides `+switch-master`."""

_SENTINEL_TIMEOUTS = {"socket_connect_timeout": 1.0, "socket_timeout": 2.0}


@dataclass(frozen=True)
class SentinelGroup:
    sentinels: tuple[Address, ...]
    service: str
    db: int
    node_options: dict[str, Any] = field(repr=False, compare=False)
    """How to reach a data node (credentials, TLS), from the URL."""
    sentinel_options: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_url(cls, url: str) -> SentinelGroup:
        parts = NodesUrl.split(url, SCHEMES, DEFAULT_SENTINEL_PORT, "sentinel")
        service, db = _service_and_db(parts.path)
        query = dict(parts.query)
        sentinel_credentials = {
            name: query.pop(f"sentinel_{name}")
            for name in ("username", "password")
            if f"sentinel_{name}" in query
        }
        node = node_options(parts.tls, parts.userinfo, db, query)
        tls = {k: v for k, v in node.items() if k.startswith("ssl")}
        return cls(parts.addresses, service, db, node, tls | sentinel_credentials)

    def manager(self, **socket_options: Any) -> redis.sentinel.Sentinel:
        """A client of the sentinels; its `master_for` gives clients of the primary."""
        return redis.sentinel.Sentinel(
            self.sentinels,
            sentinel_kwargs=_SENTINEL_TIMEOUTS | self.sentinel_options,
            **self.node_options,
            **socket_options,
        )

    def primary_client(self, settings: dict[str, Any]) -> redis.Redis:
        # As with a plain URL, the URL's own settings win over expiryd's.
        return self.manager().master_for(self.service, **(settings | self.node_options))

    def node_client(self, address: Address, **settings: Any) -> redis.Redis:
        """A client of one data node, whatever its role."""
        host, port = address
        return redis.Redis(host=host, port=port, **(self.node_options | settings))

    def nodes(self) -> tuple[Address, list[Address]]:
        """The primary and the replicas the sentinels know of."""
        manager = self.manager(**_SENTINEL_TIMEOUTS)
        try:
            primary = normal_address(manager.discover_master(self.service))
            return primary, [normal_address(r) for r in manager.discover_replicas(self.service)]
        finally:
            manager.close()

    def describe(self) -> str:
        hosts = ",".join(f"{h}:{p}" for h, p in self.sentinels)
        return f"sentinels {hosts}, service {self.service}"


def _service_and_db(path: str) -> tuple[str, int]:
    parts = [unquote(p) for p in path.split("/") if p]
    if not parts or len(parts) > 2:
        raise NodeUrlError("the path must be /SERVICE or /SERVICE/DB")
    if len(parts) == 2 and not parts[1].isdigit():
        raise NodeUrlError(f"the DB must be a number, not {parts[1]!r}")
    return parts[0], int(parts[1]) if len(parts) == 2 else 0


class PrimaryWatch(Component):
    """Tells `moved` when the primary is no longer where the listener is subscribed."""

    def __init__(
        self,
        *,
        group: SentinelGroup,
        listening_on: Callable[[], Address | None],
        moved: Callable[[str], None],
        beat: Beat = no_beat,
    ) -> None:
        super().__init__(name="primary_watch", beat=beat)
        self.group = group
        self.listening_on = listening_on
        """The data node the listener is subscribed on, None while it is not."""
        self.moved = moved
        self._manager = group.manager(**_SENTINEL_TIMEOUTS)
        self._log = get_logger(db=group.db)
        self._complained = False

    def run(self) -> None:
        next_check = 0.0
        while not self.halt.is_set():
            pubsub = self._announcements()
            try:
                while not self.halt.is_set():
                    self.beat()
                    if pubsub is not None:
                        self._read_announcement(pubsub)
                    else:
                        self.halt.wait(FOLLOW_CHECK_SECONDS)
                    if time.monotonic() >= next_check:
                        next_check = time.monotonic() + FOLLOW_CHECK_SECONDS
                        self._check()
            except (redis.RedisError, OSError):
                self.halt.wait(0.1)  # that sentinel went away: subscribe on another
            finally:
                if pubsub is not None:
                    pubsub.close()

    def _announcements(self) -> redis.client.PubSub | None:
        """A subscription to `+switch-master` on the first sentinel that answers."""
        for sentinel in self._manager.sentinels:
            pubsub = sentinel.pubsub()
            try:
                pubsub.subscribe("+switch-master")
                return pubsub
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                pubsub.close()
        return None

    def _read_announcement(self, pubsub: redis.client.PubSub) -> None:
        reply = pubsub.parse_response(block=False, timeout=FOLLOW_CHECK_SECONDS)
        if reply and reply[0] == b"message":
            # "<service> <old ip> <old port> <new ip> <new port>"
            words = reply[2].decode(errors="replace").split()
            if len(words) == 5 and words[0] == self.group.service:
                new = (words[3], int(words[4])) if words[4].isdigit() else None
                if new != self.listening_on():
                    self._moved(f"the sentinels announced +switch-master to {words[3]}:{words[4]}")

    def _check(self) -> None:
        at = self.listening_on()
        if at is None:
            return  # the listener is (re)connecting, and asks the sentinels itself
        try:
            primary = normal_address(self._manager.discover_master(self.group.service))
            role = self._role_of(at)
        except (redis.RedisError, OSError) as exc:
            if not self._complained:
                self._complained = True
                self._log.warning("sentinel.unanswered", error=describe_error(exc))
            return
        self._complained = False
        if primary != at:
            self._moved(f"the sentinels name {primary[0]}:{primary[1]} as primary")
        elif role != "master":
            self._moved(f"{at[0]}:{at[1]} is now a {role}")

    def _role_of(self, address: Address) -> str:
        client = self.group.node_client(address, **_SENTINEL_TIMEOUTS)
        try:
            role = client.execute_command("ROLE")[0]
        finally:
            client.close()
        return role.decode() if isinstance(role, bytes) else str(role)

    def _moved(self, why: str) -> None:
        if self.listening_on() is not None:
            self.moved(why)

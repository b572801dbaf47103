"""The listener: a component subscribed to keyevent notifications and sweep markers,
handing each one on as an `Event` (to the dispatcher's `hear`), and nothing else, so that
a slow database cannot make Redis drop it for falling behind. Quieted, it unsubscribes.

redis-py would reconnect a pub/sub connection silently; expiryd's clients raise instead,
so every drop is logged and followed by a logged resubscribe that the ledger answers with
a fresh scan. Keys set and due while the listener is away are never heard of, so while
Redis is merely away it is tried again every `RECONNECT_INTERVAL_SECONDS`; a failure that
a quick retry will not mend is waited out with backoff.
"""

from __future__ import annotations

import enum
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass

import redis

from expiryd import defaults
from expiryd.backoff import Backoff
from expiryd.component import Component
from expiryd.errors import ServiceError
from expiryd.liveness import Beat, no_beat
from expiryd.logs import describe_error, get_logger
from expiryd.redis.connections import CONNECTION_ERRORS, RedisTarget, ensure_notifications
from expiryd.redis.keyspace import Keyspace
from expiryd.redis.sentinel import Address

_KEEPALIVE = {
    option: value
    for option, value in (
        (getattr(socket, "TCP_KEEPIDLE", None), 15),
        (getattr(socket, "TCP_KEEPINTVL", None), 5),
        (getattr(socket, "TCP_KEEPCNT", None), 3),
    )
    if option is not None
}
"""A peer that vanished without closing the connection is noticed within about 30 s."""


def retry_soon(exc: BaseException) -> bool:
    """Whether a lost or refused connection is worth trying again in a moment: Redis is
    away (stopped, restarting, loading its data, full, cut off), not turning us away."""
    if not isinstance(exc, CONNECTION_ERRORS):
        return False
    # redis-py wraps the socket's error (a TLS one included) in its own ConnectionError.
    underlying = exc.__cause__ or exc.__context__
    return not (_turned_away(exc) or _turned_away(underlying))


def _turned_away(exc: BaseException | None) -> bool:
    """Refused by a Redis that answered: a wrong password or ACL user, a TLS certificate
    or protocol it rejects. Trying again soon changes nothing."""
    if isinstance(exc, ssl.SSLError):
        # A TLS connection that ended is a drop like any other.
        return not isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError)
    return isinstance(exc, redis.AuthenticationError | redis.exceptions.AuthorizationError)


class Kind(enum.Enum):
    EXPIRED = "expired"
    EXPIRE = "expire"
    DEL = "del"
    PERSIST = "persist"
    RENAME_FROM = "rename_from"
    RENAME_TO = "rename_to"
    RESTORE = "restore"
    COPY_TO = "copy_to"
    MOVE_FROM = "move_from"
    MOVE_TO = "move_to"
    MARKER = "marker"
    RECORD_AGAIN = "record_again"
    """Not heard: a record the dispatcher tries again (see `cluster_events`)."""


@dataclass(frozen=True)
class Event:
    kind: Kind
    data: bytes
    """The key name; for a marker, its payload."""


class Listener(Component):
    def __init__(
        self,
        *,
        target: RedisTarget,
        keyspace: Keyspace,
        hear: Callable[[Event, float], bool],
        on_subscribed: Callable[[], None],
        configure_redis: bool = False,
        beat: Beat = no_beat,
        node: str = "",
    ) -> None:
        """`node`: which node of a cluster this listener is on, for its log lines."""
        super().__init__(name="listener", beat=beat)
        self.target = target
        self.hear = hear
        """Takes each event within a timeout, or says it could not (the dispatcher is
        behind: the listener then waits, reading nothing more from Redis)."""
        self.on_subscribed = on_subscribed
        """Called after every (re)subscribe: events may have gone unheard before it."""
        self.configure_redis = configure_redis
        self.subscribed = threading.Event()
        """Set while every channel is subscribed; cleared when the connection is lost."""
        self.subscriptions = 0
        self.address: Address | None = None
        """The Redis node subscribed on, while subscribed."""
        self._node: Address | None = None
        self._leave: str | None = None
        self._kinds: dict[bytes, Kind] = {
            target.keyevent_channel(kind.value).encode(): kind
            for kind in Kind
            if kind not in (Kind.MARKER, Kind.RECORD_AGAIN)
        }
        self._kinds[keyspace.sweep_channel.encode()] = Kind.MARKER
        self._confirmed = 0
        self._backoff = Backoff.reconnecting(beat)
        self._log = get_logger(db=target.db, **({"node": node} if node else {}))

    def run(self) -> None:
        """Listen until quieted, reconnecting for as long as it takes."""
        while not self.halt.is_set():
            try:
                self._listen()
            except CONNECTION_ERRORS as exc:
                self._reconnect_after(exc)
            except ServiceError as exc:
                self._wait_after("redis.misconfigured", str(exc))
            except Exception as exc:  # a bug must not end listening for good
                self._wait_after("listener.crashed", describe_error(exc), exc_info=True)

    def _listen(self) -> None:
        client = self.target.client(
            health_check_interval=defaults.HEALTH_CHECK_SECONDS,
            socket_keepalive_options=_KEEPALIVE,
        )
        pubsub = client.pubsub()
        self._confirmed = 0
        try:
            self._ensure_notifications(client)
            pubsub.subscribe(*self._kinds)
            self._node = _node_of(pubsub.connection)
            while not self.halt.is_set():
                if self._leave is not None:
                    self._log.warning(
                        "redis.primary_changed", was=_named(self._node), reason=self._leave
                    )
                    return
                self.beat()
                # The raw reply, without get_message's per-message dict and bookkeeping:
                # this loop runs once per event, hundreds of thousands of times a second.
                self._receive(pubsub.parse_response(block=False, timeout=1.0))
        finally:
            self.subscribed.clear()
            self.address = self._node = None
            self._leave = None
            pubsub.close()
            client.close()

    def follow(self, why: str) -> None:
        """Leave the node subscribed on, and subscribe again wherever the primary is now."""
        self._leave = why

    def _ensure_notifications(self, client: redis.Redis) -> None:
        group = self.target.group
        if group is None:
            ensure_notifications(self.target, client, self.configure_redis)
            return
        # In a Sentinel group a replica may become the primary at any time, and the flags
        # are not replicated: each node needs its own.
        primary, replicas = group.nodes()
        ensure_notifications(self.target, client, self.configure_redis, primary)
        for replica in replicas:
            self._ensure_replica_notifications(replica)

    def _ensure_replica_notifications(self, replica: Address) -> None:
        node = self.target.node_client(replica)
        try:
            ensure_notifications(self.target, node, self.configure_redis, replica)
        except (ServiceError, *CONNECTION_ERRORS) as exc:
            self._log.warning(
                "redis.replica_unready", node=_named(replica), error=describe_error(exc)
            )
        finally:
            node.close()

    def _receive(self, reply: list[bytes] | None) -> None:
        """One reply of the subscribed connection: [b"message", channel, data], or
        [b"subscribe", channel, count] once per channel subscribed."""
        if not reply:
            return
        if reply[0] == b"message":
            self._hand_on(Event(self._kinds[reply[1]], reply[2]))
        elif reply[0] == b"subscribe":
            self._confirmed += 1
            if self._confirmed == len(self._kinds):
                # The server's confirmation: from here on, no event is missed.
                self.subscriptions += 1
                self.address = self._node
                self._backoff.reset()
                self.subscribed.set()
                self._log.info("listener.subscribed", resubscribe=self.subscriptions > 1)
                self.on_subscribed()

    def _hand_on(self, event: Event) -> None:
        while not self.hear(event, 0.5):
            if self.halt.is_set():
                return  # stopping: the ledger finds what it was about at the next start
            self.beat()  # held back by a busy dispatcher, not stuck

    def _reconnect_after(self, exc: Exception) -> None:
        if not retry_soon(exc):
            self._wait_after("redis.disconnected", describe_error(exc))
            return
        self._backoff.wait_steadily_after(
            self.halt,
            self._log,
            "redis.disconnected",
            describe_error(exc),
            defaults.RECONNECT_INTERVAL_SECONDS,
        )

    def _wait_after(self, event: str, error: str, exc_info: bool = False) -> None:
        self._backoff.wait_after(self.halt, self._log, event, error, exc_info)


def _node_of(connection: object) -> Address | None:
    host, port = getattr(connection, "host", None), getattr(connection, "port", None)
    return (str(host), int(port)) if host and port else None


def _named(node: Address | None) -> str:
    return f"{node[0]}:{node[1]}" if node else "?"

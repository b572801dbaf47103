"""The pub/sub subscriber: `__keyevent@<db>__:expired` in, expired key names out.

redis-py would reconnect a pub/sub connection silently; expiryd's clients raise instead,
so every drop is logged, waited out with backoff, and followed by a logged resubscribe.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Any

from expiryd import defaults
from expiryd.backoff import backoff_delay
from expiryd.connections import CONNECTION_ERRORS, RedisTarget, ensure_notifications
from expiryd.errors import ServiceError
from expiryd.logs import describe_error, get_logger

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


class Listener:
    def __init__(
        self,
        target: RedisTarget,
        on_expired: Callable[[bytes], None],
        stop: threading.Event,
        configure_redis: bool = False,
    ) -> None:
        self.target = target
        self.on_expired = on_expired
        self.stop = stop
        self.configure_redis = configure_redis
        self.subscriptions = 0
        self._failures = 0
        self._log = get_logger(channel=target.expired_channel)

    def run(self) -> None:
        """Listen until `stop` is set, reconnecting for as long as it takes."""
        while not self.stop.is_set():
            try:
                self._listen()
            except CONNECTION_ERRORS as exc:
                self._wait_after("redis.disconnected", describe_error(exc))
            except ServiceError as exc:
                self._wait_after("redis.misconfigured", str(exc))
            except Exception as exc:  # a bug must not end listening for good
                self._wait_after("listener.crashed", describe_error(exc), exc_info=True)

    def _listen(self) -> None:
        client = self.target.client(
            health_check_interval=defaults.HEALTH_CHECK_SECONDS,
            socket_keepalive_options=_KEEPALIVE,
        )
        pubsub = client.pubsub(ignore_subscribe_messages=False)
        try:
            ensure_notifications(self.target, client, self.configure_redis)
            pubsub.subscribe(self.target.expired_channel)
            while not self.stop.is_set():
                self._receive(pubsub.get_message(timeout=1.0))
        finally:
            pubsub.close()
            client.close()

    def _receive(self, message: dict[str, Any] | None) -> None:
        if message is None:
            return
        if message["type"] == "message":
            self.on_expired(message["data"])
        elif message["type"] == "subscribe":
            # The server's confirmation: from here on, no expiry is missed.
            self.subscriptions += 1
            self._failures = 0
            self._log.info("listener.subscribed", resubscribe=self.subscriptions > 1)

    def _wait_after(self, event: str, error: str, exc_info: bool = False) -> None:
        self._failures += 1
        delay = backoff_delay(
            self._failures, defaults.RECONNECT_BASE_SECONDS, defaults.RECONNECT_CAP_SECONDS
        )
        extra = {"exc_info": True} if exc_info else {}
        self._log.warning(
            event, error=error, attempt=self._failures, retry_in_s=round(delay, 2), **extra
        )
        self.stop.wait(delay)

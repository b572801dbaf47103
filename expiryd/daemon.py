"""`expiryd run`: the listener feeds expired keys to the worker until a signal says stop.

The listener runs in a thread of its own so that a slow database never keeps it from
reading Redis (a pub/sub client that falls behind is disconnected by the server).
"""

from __future__ import annotations

import queue
import signal
import threading
from types import FrameType

from expiryd import __version__
from expiryd.config import Config
from expiryd.connections import CONNECTION_ERRORS, RedisTarget, ensure_notifications
from expiryd.db import make_engine
from expiryd.handlers import build_handlers
from expiryd.listener import Listener
from expiryd.logs import describe_error, get_logger, redact_url
from expiryd.worker import Worker


class Daemon:
    def __init__(self, config: Config, configure_redis: bool = False) -> None:
        self.config = config
        self.target = RedisTarget.from_url(config.redis.url)
        self.engine = make_engine(config.database)
        self.worker = Worker(
            routes=config.routes,
            handlers=build_handlers(config, self.engine),
            prefix=config.redis.prefix.encode(),
            max_key_bytes=config.redis.max_key_bytes,
        )
        self.stop = threading.Event()
        self.inbox: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self.listener = Listener(self.target, self.inbox.put, self.stop, configure_redis)
        self._signal: str | None = None
        self._log = get_logger()

    def run(self) -> int:
        self._check_redis()
        self._install_signal_handlers()
        self._log.info(
            "expiryd.started",
            version=__version__,
            config=self.config.source,
            redis=self.target.safe_url,
            database=redact_url(self.config.database.url),
            routes=[route.name for route in self.config.routes],
        )
        thread = threading.Thread(target=self.listener.run, name="listener", daemon=True)
        thread.start()
        while not self.stop.is_set():
            self._handle_next(timeout=0.5)
        self._log.info("expiryd.stopping", signal=self._signal, in_hand=self.inbox.qsize())
        thread.join(timeout=10)
        while self._handle_next(timeout=0):
            pass
        self.engine.dispose()
        self._log.info("expiryd.stopped", **{o.value: n for o, n in self.worker.counts.items()})
        return 0

    def _handle_next(self, timeout: float) -> bool:
        try:
            key = self.inbox.get(timeout=timeout) if timeout else self.inbox.get_nowait()
        except queue.Empty:
            return False
        self.worker.handle(key)
        return True

    def _check_redis(self) -> None:
        """Fail fast on a Redis that would never notify; an unreachable one is retried."""
        client = self.target.client()
        try:
            ensure_notifications(self.target, client, self.listener.configure_redis)
        except CONNECTION_ERRORS as exc:
            self._log.warning("redis.unreachable", error=describe_error(exc))
        finally:
            client.close()

    def _install_signal_handlers(self) -> None:
        # Only set flags here: logging from a signal handler could deadlock on the log lock.
        def request_stop(signum: int, _frame: FrameType | None) -> None:
            self._signal = self._signal or signal.Signals(signum).name
            self.stop.set()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)

"""`expiryd run`: four threads, joined by an in-process inbox and a queue in Redis.

- the listener reads keyevent notifications into the inbox, never waiting on anything
  else, so a slow database cannot make Redis drop it for falling behind;
- the sweeper keeps the ledger up to date, nudges keys whose deadline has passed, and
  hands out again jobs whose worker's lease lapsed;
- the main thread takes events from the inbox in order: ledger updates, and claims that
  queue each expiry as a durable job;
- the worker leases jobs, runs their handlers and settles them.
"""

from __future__ import annotations

import queue
import signal
import threading
import uuid
from types import FrameType

import redis

from expiryd import __version__
from expiryd.config import Config
from expiryd.connections import CONNECTION_ERRORS, RedisTarget, ensure_notifications
from expiryd.db import make_engine
from expiryd.dispatch import Dispatcher
from expiryd.handlers import build_handlers
from expiryd.keyspace import Keyspace
from expiryd.ledger import Ledger
from expiryd.listener import Event, Listener
from expiryd.logs import describe_error, get_logger, redact_url
from expiryd.queue import JobQueue
from expiryd.sweeper import Sweeper
from expiryd.worker import Worker

BATCH = 500
"""Events taken from the inbox at a time, so runs of ledger updates share a round trip."""


class Daemon:
    def __init__(self, config: Config, configure_redis: bool = False) -> None:
        self.config = config
        self.configure_redis = configure_redis
        self.target = RedisTarget.from_url(config.redis.url)
        keyspace = Keyspace(config.redis.prefix, self.target.db)
        self.engine = make_engine(config.database)
        handlers = build_handlers(config, self.engine)
        self.stop = threading.Event()
        self.stop_taking = threading.Event()
        self.inbox: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self.redis = self.target.client()
        ledger = Ledger(self.redis, keyspace, config.redis.capture_values)
        jobs = JobQueue(self.redis, keyspace)
        marker_prefix = f"{uuid.uuid4().hex}:"
        max_key_bytes = config.redis.max_key_bytes
        self.worker = Worker(
            jobs, config.routes, handlers, config.worker, max_key_bytes, self.stop_taking
        )
        self.listener = Listener(
            self.target, keyspace, self.inbox.put, self._resubscribed, self.stop, configure_redis
        )
        self.sweeper = Sweeper(
            ledger, jobs, marker_prefix, self.listener.subscribed, self.stop, max_key_bytes
        )
        self.dispatcher = Dispatcher(
            ledger,
            keyspace,
            marker_prefix,
            self.worker.reason_unqueued,
            self.worker.report_unqueued,
            self.worker.wake.set,
        )
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
            capture_values=self.config.redis.capture_values,
        )
        threads = [
            threading.Thread(target=self.listener.run, name="listener", daemon=True),
            threading.Thread(target=self.sweeper.run, name="sweeper", daemon=True),
        ]
        worker = threading.Thread(target=self.worker.run, name="worker", daemon=True)
        for thread in [*threads, worker]:
            thread.start()
        while not self.stop.is_set():
            self._process_next(timeout=0.5)
        self._log.info("expiryd.stopping", signal=self._signal, in_hand=self.worker.in_hand)
        for thread in threads:
            thread.join(timeout=10)
        while self._process_next(timeout=0):
            pass
        self.stop_taking.set()
        worker.join(timeout=self.config.worker.grace_seconds)
        unfinished = self.worker.in_hand if worker.is_alive() else 0
        self.engine.dispose()
        self._log.info(
            "expiryd.stopped",
            unfinished=unfinished,
            **{o.value: n for o, n in self.worker.counts.items()},
        )
        return 0

    def _resubscribed(self) -> None:
        self.sweeper.request_resync()

    def _process_next(self, timeout: float) -> bool:
        events = self._take(timeout)
        if not events:
            return False
        try:
            self.dispatcher.process(events)
        except redis.RedisError as exc:  # unreachable, or refusing (out of memory, say)
            # What was not claimed stays in the ledger and is recovered after the rescan.
            self._log.warning("ledger.unavailable", error=describe_error(exc))
            self.sweeper.request_resync()
        return True

    def _take(self, timeout: float) -> list[Event]:
        try:
            events = [self.inbox.get(timeout=timeout) if timeout else self.inbox.get_nowait()]
        except queue.Empty:
            return []
        while len(events) < BATCH:
            try:
                events.append(self.inbox.get_nowait())
            except queue.Empty:
                break
        return events

    def _check_redis(self) -> None:
        """Fail fast on a Redis that would never notify; an unreachable one is retried."""
        try:
            ensure_notifications(self.target, self.redis, self.configure_redis)
        except CONNECTION_ERRORS as exc:
            self._log.warning("redis.unreachable", error=describe_error(exc))

    def _install_signal_handlers(self) -> None:
        # Only set flags here: logging from a signal handler could deadlock on the log lock.
        def request_stop(signum: int, _frame: FrameType | None) -> None:
            self._signal = self._signal or signal.Signals(signum).name
            self.stop.set()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)

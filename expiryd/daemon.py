"""`expiryd run`: threads joined by an in-process inbox and a queue in Redis.

- the listener reads keyevent notifications into the inbox, never waiting on anything
  else, so a slow database cannot make Redis drop it for falling behind;
- the sweeper keeps the ledger up to date, nudges keys whose deadline has passed, and
  hands out again jobs whose worker's lease lapsed;
- the main thread applies events from the inbox in order: ledger updates, and claims that
  queue each expiry as a durable job;
- `concurrency` workers each lease a batch of jobs, run their handlers and settle them.

`expiryd work` runs the workers alone, to drain the same queue from more processes.

If any of these threads ends while the daemon is meant to be running, the daemon logs it
and exits non-zero, so that its supervisor starts it again.
"""

from __future__ import annotations

import queue
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from types import FrameType

import redis

from expiryd import __version__, defaults
from expiryd.backoff import Backoff
from expiryd.config import Config
from expiryd.connections import CONNECTION_ERRORS, RedisTarget, ensure_notifications, warn_eviction
from expiryd.db import make_engine
from expiryd.dispatch import Dispatcher
from expiryd.handlers import build_handlers
from expiryd.keyspace import Keyspace
from expiryd.ledger import Ledger
from expiryd.listener import Event, Listener
from expiryd.logs import describe_error, get_logger
from expiryd.outcomes import Outcome
from expiryd.queue import JobQueue
from expiryd.redact import redact_url
from expiryd.sweeper import Sweeper
from expiryd.worker import Worker

EXIT_THREAD_DIED = 70
"""The exit code when one of expiryd's threads ended unexpectedly (EX_SOFTWARE)."""


class Daemon:
    def __init__(self, config: Config, configure_redis: bool = False, listen: bool = True) -> None:
        self.config = config
        self.configure_redis = configure_redis
        self.listen = listen
        self.target = RedisTarget.from_url(config.redis.url)
        keyspace = Keyspace(config.redis.prefix, self.target.db)
        # A statement ends before the lease it runs under can lapse.
        io_timeout = config.worker.lease_seconds * defaults.STATEMENT_SHARE_OF_LEASE
        self.engine = make_engine(config.database, io_timeout, config.worker.concurrency)
        handlers = build_handlers(config, self.engine)
        self.stop = threading.Event()
        self.stop_taking = threading.Event()
        self.inbox: queue.Queue[Event] = queue.Queue(maxsize=defaults.INBOX_EVENTS)
        self.redis = self.target.client()
        ledger = Ledger(
            self.redis, keyspace, config.redis.capture_values, config.redis.max_value_bytes
        )
        self.jobs = jobs = JobQueue(self.redis, keyspace)
        marker_prefix = f"{uuid.uuid4().hex}:"
        max_key_bytes = config.redis.max_key_bytes
        self.workers = [
            Worker(jobs, config.routes, handlers, config.worker, max_key_bytes, self.stop_taking)
            for _ in range(config.worker.concurrency)
        ]
        self.listener = Listener(
            self.target, keyspace, self._hear, self._resubscribed, self.stop, configure_redis
        )
        self.dispatcher = Dispatcher(
            ledger,
            keyspace,
            marker_prefix,
            self.workers[0].reason_unqueued,
            self.workers[0].report_unqueued,
            self._wake_workers,
        )
        self.sweeper = Sweeper(
            ledger,
            jobs,
            marker_prefix,
            self.listener.subscribed,
            self.dispatcher.wait_for_marker,
            self.stop,
            max_key_bytes,
        )
        self._signal: str | None = None
        self._died: str | None = None
        self._backoff = Backoff(defaults.RECONNECT_BASE_SECONDS, defaults.RECONNECT_CAP_SECONDS)
        self._log = get_logger()

    def run(self) -> int:
        self._check_redis()
        self._install_signal_handlers()
        self._log.info(
            "expiryd.started",
            version=__version__,
            mode="run" if self.listen else "work",
            config=self.config.source,
            redis=redact_url(self.config.redis.url),
            database=redact_url(self.config.database.url),
            routes=[route.name for route in self.config.routes],
            capture_values=self.config.redis.capture_values,
            concurrency=len(self.workers),
        )
        self._upgrade_queue()
        threads = []
        if self.listen:
            threads += [
                self._start("listener", self.listener.run),
                self._start("sweeper", self.sweeper.run),
            ]
        workers = [self._start(f"worker-{n}", w.run) for n, w in enumerate(self.workers, 1)]
        while not self.stop.is_set():
            if self.listen:
                self._dispatch(timeout=0.5, pause=self._wait_after_failure)
            else:
                self.stop.wait(0.5)
        self.stop_taking.set()
        self._log.info("expiryd.stopping", signal=self._signal, in_hand=self._in_hand())
        return self._shut_down(threads, workers)

    def _shut_down(self, threads: list[threading.Thread], workers: list[threading.Thread]) -> int:
        """Everything within one deadline, `grace_seconds` from now: the batches in hand,
        the events heard and not yet applied, the threads."""
        deadline = time.monotonic() + self.config.worker.grace_seconds
        for thread in threads:
            thread.join(timeout=_left(deadline))
        while time.monotonic() < deadline and self._dispatch(0, lambda: time.sleep(0.1)):
            pass
        for worker in workers:
            worker.join(timeout=_left(deadline))
        unfinished = sum(
            w.in_hand for w, t in zip(self.workers, workers, strict=True) if t.is_alive()
        )
        self.engine.dispose()
        counts: Counter[Outcome] = sum((w.tally() for w in self.workers), Counter())
        self._log.info(
            "expiryd.stopped",
            unfinished=unfinished,
            unapplied_events=len(self.dispatcher.pending) + self.inbox.qsize(),
            **{o.value: counts[o] for o in Outcome},
        )
        return EXIT_THREAD_DIED if self._died else 0

    def _upgrade_queue(self) -> None:
        """Before any thread touches the queue: move in the jobs an earlier expiryd queued."""
        while not self.stop.is_set():
            try:
                moved = self.jobs.upgrade()
            except (redis.RedisError, *CONNECTION_ERRORS) as exc:
                self._backoff.wait_after(
                    self.stop, self._log, "queue.unavailable", describe_error(exc)
                )
                continue
            if moved:
                self._log.warning("jobs.upgraded", jobs=moved)
            self._backoff.reset()
            return

    def _in_hand(self) -> int:
        return sum(worker.in_hand for worker in self.workers)

    def _wake_workers(self) -> None:
        for worker in self.workers:
            worker.wake.set()

    def _start(self, name: str, target: Callable[[], None]) -> threading.Thread:
        thread = threading.Thread(target=self._supervised, args=(name, target), name=name)
        thread.daemon = True
        thread.start()
        return thread

    def _supervised(self, name: str, target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as exc:  # any way a thread ends is reported
            self._thread_ended(name, describe_error(exc), exc_info=True)
        else:
            stopping = self.stop_taking if name.startswith("worker") else self.stop
            if not stopping.is_set():
                self._thread_ended(name, "returned while the daemon was running")

    def _thread_ended(self, name: str, error: str, exc_info: bool = False) -> None:
        self._died = name
        self._signal = self._signal or f"thread {name} ended"
        self._log.critical("thread.died", thread=name, error=error, exc_info=exc_info)
        self.stop_taking.set()
        self.stop.set()

    def _hear(self, event: Event) -> None:
        """The listener's hand-off. When the inbox is full the listener waits here, and
        stops reading from Redis, until there is room."""
        while not self.stop.is_set():
            try:
                self.inbox.put(event, timeout=0.5)
                return
            except queue.Full:
                continue

    def _resubscribed(self) -> None:
        self.sweeper.request_resync()

    def _dispatch(self, timeout: float, pause: Callable[[], None]) -> bool:
        """Apply what is pending, taking more from the inbox first; False when there was
        nothing to do. On an error, what was not applied stays pending."""
        pending = self.dispatcher.pending
        if len(pending) < defaults.WINDOW_EVENTS:
            pending.extend(self._take(0 if pending else timeout))
        if not pending:
            return False
        try:
            self.dispatcher.run_pending()
            self._backoff.reset()
        except redis.RedisError as exc:  # unreachable, or refusing (out of memory, busy)
            self._failed("ledger.unavailable", exc, pause)
        except Exception as exc:  # a bug must not lose the events: they are tried again
            self._failed("dispatcher.crashed", exc, pause, exc_info=True)
        return True

    def _failed(
        self, event: str, exc: Exception, pause: Callable[[], None], exc_info: bool = False
    ) -> None:
        self._log.warning(
            event,
            error=describe_error(exc),
            pending=len(self.dispatcher.pending),
            attempt=self._backoff.failures + 1,
            exc_info=exc_info,
        )
        pause()

    def _wait_after_failure(self) -> None:
        self.stop.wait(self._backoff.next_delay())

    def _take(self, timeout: float) -> list[Event]:
        try:
            events = [self.inbox.get(timeout=timeout) if timeout else self.inbox.get_nowait()]
        except queue.Empty:
            return []
        while len(events) < defaults.WINDOW_EVENTS:
            try:
                events.append(self.inbox.get_nowait())
            except queue.Empty:
                break
        return events

    def _check_redis(self) -> None:
        """Fail fast on a Redis that would never notify; an unreachable one is retried."""
        try:
            if self.listen:
                ensure_notifications(self.target, self.redis, self.configure_redis)
            warn_eviction(self.target, self.redis, self._log)
        except CONNECTION_ERRORS as exc:
            self._log.warning("redis.unreachable", error=describe_error(exc))

    def _install_signal_handlers(self) -> None:
        # Only set flags here: logging from a signal handler could deadlock on the log lock.
        def request_stop(signum: int, _frame: FrameType | None) -> None:
            self._signal = self._signal or signal.Signals(signum).name
            self.stop_taking.set()
            self.stop.set()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())

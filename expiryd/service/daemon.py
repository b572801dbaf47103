"""`expiryd run`: threads joined by a queue of events heard and a queue of jobs in Redis.

- the listener reads keyevent notifications into the queue of events heard, never
  waiting on anything else, so a slow database cannot make Redis drop it for falling
  behind;
- the sweeper keeps the ledger up to date and nudges keys whose deadline has passed;
- the main thread applies the events heard in order: ledger updates, and claims that
  queue each expiry as a durable job;
- `concurrency` workers each lease a batch of jobs, run their handlers and settle them,
  and hand out again the jobs of a worker whose lease lapsed.

SIGHUP applies a changed config in place (see `reload`): the workers take up the new
routes, handlers and settings at their next batch, while the listener stays subscribed.

`expiryd work` runs the workers alone, to drain the same queue from more processes.

If any of these threads ends while the daemon is meant to be running, the daemon logs it
and exits non-zero, so that its supervisor starts it again. A pulse thread tells systemd
when the daemon is ready, and feeds its watchdog only while every loop keeps moving.
"""

from __future__ import annotations

import queue
import signal
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from types import FrameType

import redis
from sqlalchemy import Engine

from expiryd import __version__, defaults, liveness
from expiryd.backoff import Backoff
from expiryd.config import Config
from expiryd.config import load as load_config
from expiryd.database.engine import make_engine
from expiryd.errors import UserError
from expiryd.handlers import Handler, build_handlers
from expiryd.liveness import Loops
from expiryd.logs import describe_error, get_logger
from expiryd.outcomes import Outcome
from expiryd.redact import redact_url, scrub
from expiryd.redis.connections import (
    CONNECTION_ERRORS,
    RedisTarget,
    ensure_notifications,
    warn_eviction,
)
from expiryd.redis.dispatch import Dispatcher
from expiryd.redis.keyspace import Keyspace
from expiryd.redis.ledger import Ledger
from expiryd.redis.listener import Event, Listener
from expiryd.redis.queue import JobQueue
from expiryd.redis.sweeper import Sweeper
from expiryd.service import reload
from expiryd.service.metrics import Metrics, metrics_address_free
from expiryd.service.notify import Notifier
from expiryd.service.pulse import Pulse
from expiryd.service.report import Reporter
from expiryd.tally import Tally
from expiryd.worker import Worker

EXIT_THREAD_DIED = 70
"""The exit code when one of expiryd's threads ended unexpectedly (EX_SOFTWARE)."""


class Daemon:
    def __init__(self, config: Config, configure_redis: bool = False, listen: bool = True) -> None:
        self.config = config
        self.configure_redis = configure_redis
        self.listen = listen
        self.target = RedisTarget.from_url(config.redis.url)
        self.keyspace = keyspace = Keyspace(config.redis.prefix, self.target.db)
        self.started_at = time.time()
        self.engine = _engine_for(config)
        self.redis = self.target.client()
        handlers = build_handlers(config, self.engine, self.redis)
        self.stop = threading.Event()
        self.heard: queue.Queue[Event] = queue.Queue(maxsize=defaults.HEARD_EVENTS_LIMIT)
        self.notifier = Notifier.from_environ()
        self.loops = Loops(self.notifier.watchdog_seconds or defaults.STALL_SECONDS)
        self.tally = Tally()
        ledger = Ledger(
            self.redis, keyspace, config.redis.capture_values, config.redis.max_value_bytes
        )
        self.jobs = JobQueue(self.redis, keyspace)
        marker_prefix = f"{uuid.uuid4().hex}:"
        max_key_bytes = config.redis.max_key_bytes
        self._numbered = 0
        self.workers = [self._worker(config, handlers) for _ in range(config.worker.concurrency)]
        self._crew: list[tuple[Worker, threading.Thread]] = []
        """Every worker started, with its thread, retired ones included until they end."""
        self._old_engines: list[Engine] = []
        """Engines a reload replaced: batches begun before it may still use them."""
        self.listener = Listener(
            self.target,
            keyspace,
            self._hear,
            self._resubscribed,
            self.stop,
            configure_redis,
            self.loops.beat_for("listener"),
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
            ledger=ledger,
            marker_prefix=marker_prefix,
            subscribed=self.listener.subscribed,
            marker_heard=self.dispatcher.wait_for_marker,
            stop=self.stop,
            max_key_bytes=max_key_bytes,
            beat=self.loops.beat_for("sweeper"),
        )
        self.metrics = Metrics([r.name for r in config.routes]) if config.metrics.listen else None
        if self.metrics is not None:
            self.tally.watchers.append(self.metrics.observe)
        self.reporter = Reporter(
            # Its own connection, quick to give up: a hung Redis must not hold up the pulse.
            self.target.client(socket_connect_timeout=1, socket_timeout=1),
            keyspace,
            self.notifier,
            self.tally,
            self.loops,
            self.listener.subscribed if listen else None,
            self.metrics,
        )
        self._pulse_stop = threading.Event()
        self.pulse = Pulse(
            self.notifier, self.loops, self._ready, self.reporter.report, self._pulse_stop
        )
        self._beat = self.loops.beat_for("dispatcher")
        self._reload = threading.Event()
        self._signal: str | None = None
        self._died: str | None = None
        self._backoff = Backoff.reconnecting(self._beat)
        self._log = get_logger()

    def run(self) -> int:
        # This thread's statements (a reload's check) are progress of the dispatcher loop.
        liveness.bind(self._beat, self.config.worker.lease_seconds)
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
        if self.notifier.unsupported:
            self._log.warning(
                "systemd.unsupported",
                notify_socket=self.notifier.unsupported,
                error="only a path or an @abstract name can be notified",
            )
        self._serve_metrics()
        pulse = self._start("pulse", self.pulse.run, self._pulse_stop)
        self._upgrade_queue()
        threads = []
        if self.listen:
            threads += [
                self._start("listener", self.listener.run, self.stop),
                self._start("sweeper", self.sweeper.run, self.stop),
            ]
        for worker in self.workers:
            self._start_worker(worker)
        while not self.stop.is_set():
            self._beat()
            if self._reload.is_set():
                self._reload.clear()
                self._consider_reload()
            if self.listen:
                self._dispatch(timeout=0.5, pause=self._wait_after_failure)
            else:
                self.stop.wait(0.5)
        self._quiet_workers(self.workers)
        self.loops.forget("dispatcher")
        self._log.info("expiryd.stopping", signal=self._signal, in_hand=self._in_hand())
        grace = self.config.worker.grace_seconds
        self.notifier.send(
            STOPPING=1,
            STATUS=f"stopping: finishing {self._in_hand()} expiries in hand",
            EXTEND_TIMEOUT_USEC=int((grace + defaults.STOP_MARGIN_SECONDS) * 1_000_000),
        )
        try:
            return self._shut_down(threads)
        finally:
            self._pulse_stop.set()
            pulse.join(timeout=defaults.PULSE_JOIN_SECONDS)
            if self.metrics is not None:
                self.metrics.close()

    def _shut_down(self, threads: list[threading.Thread]) -> int:
        """Everything within one deadline, `grace_seconds` from now: the batches in hand,
        the events heard and not yet applied, the threads."""
        deadline = time.monotonic() + self.config.worker.grace_seconds
        for thread in threads:
            thread.join(timeout=_left(deadline))
        while time.monotonic() < deadline and self._dispatch(0, lambda: time.sleep(0.1)):
            pass
        for _, thread in self._crew:
            thread.join(timeout=_left(deadline))
        unfinished = sum(w.in_hand for w, thread in self._crew if thread.is_alive())
        for engine in (self.engine, *self._old_engines):
            engine.dispose()
        counts = self.tally.by_outcome()
        self._log.info(
            "expiryd.stopped",
            unfinished=unfinished,
            unapplied_events=len(self.dispatcher.pending) + self.heard.qsize(),
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

    def _consider_reload(self) -> None:
        """SIGHUP: apply the config as it is now, in place, if it changed and is sound."""
        path = None if self.config.source == "(defaults)" else self.config.source
        verdict = reload.judge(self.config, lambda: load_config(path), self._same_redis)
        if verdict.config is not None:
            self._apply(verdict.config, verdict.fields)
            return
        log = self._log.info if not verdict.fields else self._log.error
        log(verdict.event, **verdict.fields)

    def _same_redis(self, config: Config) -> bool | None:
        return reload.probe_same_redis(self.redis, self.keyspace, config.redis.url)

    def _apply(self, config: Config, fields: dict[str, object]) -> None:
        """Build what the new config needs here, as it will run; then hand it to the
        workers, which take it up at their next batch. Refused if any part fails."""
        self.notifier.send(RELOADING=1, MONOTONIC_USEC=time.monotonic_ns() // 1000)
        try:
            engine, handlers = self._build(config)
        except Exception as exc:  # a missing table, a handler that cannot load: refused
            self.notifier.send(READY=1, STATUS="reload refused; running on the old config")
            error = scrub(str(exc)) if isinstance(exc, UserError) else describe_error(exc)
            self._log.error("config.reload_failed", **fields, error=error)
            return
        old_engine, self.engine, self.config = self.engine, engine, config
        for worker in self.workers:
            worker.use(config.routes, handlers, config.worker)
        self._resize_workers(config, handlers)
        # Batches in hand, and retired workers, may still use the old engine's pool:
        # disposed at exit, not now.
        self._old_engines.append(old_engine)
        stale = reload.changed_code(config, self.started_at)
        self._log.info("config.reloaded", **fields, code_changed_on_disk=stale or None)
        self.notifier.send(READY=1, STATUS="running")

    def _build(self, config: Config) -> tuple[Engine, dict[str, Handler]]:
        engine = _engine_for(config)
        try:
            handlers = build_handlers(config, engine, self.redis)
            self._move_metrics(config)
        except BaseException:
            engine.dispose()
            raise
        return engine, handlers

    def _serve_metrics(self) -> None:
        listen = self.config.metrics.listen
        if self.metrics is None or listen is None:
            return
        self.metrics.serve(*listen)
        host, port = listen
        self._log.info("metrics.serving", url=f"http://{host}:{port}/metrics")

    def _ready(self) -> bool:
        """Subscribed, and the ledger brought up to date once (a `work` daemon: at once)."""
        if not self.listen:
            return True
        return self.listener.subscribed.is_set() and self.sweeper.synced.is_set()

    def _in_hand(self) -> int:
        return sum(worker.in_hand for worker, _ in self._crew)

    def _wake_workers(self) -> None:
        for worker in self.workers:
            worker.wake.set()

    def _worker(self, config: Config, handlers: Mapping[str, Handler]) -> Worker:
        self._numbered += 1
        name = f"worker-{self._numbered}"
        return Worker(
            self.jobs,
            config.routes,
            handlers,
            config.worker,
            config.redis.max_key_bytes,
            threading.Event(),
            self.tally,
            self.loops.beat_for(name),
            name=name,
        )

    def _start_worker(self, worker: Worker) -> None:
        self._crew = [(w, thread) for w, thread in self._crew if thread.is_alive()]
        self._crew.append((worker, self._start(worker.name, worker.run, worker.stop)))

    def _resize_workers(self, config: Config, handlers: Mapping[str, Handler]) -> None:
        """`concurrency` workers from now: new ones started, extra ones quieted (they
        finish the batch in hand, then end)."""
        wanted = config.worker.concurrency
        while len(self.workers) < wanted:
            worker = self._worker(config, handlers)
            self.workers.append(worker)
            self._start_worker(worker)
        self._quiet_workers(self.workers[wanted:])
        del self.workers[wanted:]

    @staticmethod
    def _quiet_workers(workers: Sequence[Worker]) -> None:
        """Take no more jobs; the group in hand is finished, the rest put back."""
        for worker in workers:
            worker.stop.set()

    def _move_metrics(self, config: Config) -> None:
        """Serve the metrics at the new config's address, if it changed."""
        listen = config.metrics.listen
        if listen == self.config.metrics.listen:
            return
        if listen is not None:
            metrics_address_free(*listen)
        if self.metrics is not None:
            self.metrics.close()
        if listen is None:
            return
        if self.metrics is None:
            self.metrics = Metrics([r.name for r in config.routes])
            self.tally.watchers.append(self.metrics.observe)
            self.reporter.metrics = self.metrics
        self.metrics.serve(*listen)
        self._log.info("metrics.serving", url=f"http://{listen[0]}:{listen[1]}/metrics")

    def _start(
        self, name: str, target: Callable[[], None], stop: threading.Event
    ) -> threading.Thread:
        """A supervised thread that is meant to run until `stop` is set."""
        thread = threading.Thread(target=self._supervised, args=(name, target, stop), name=name)
        thread.daemon = True
        thread.start()
        return thread

    def _supervised(self, name: str, target: Callable[[], None], stop: threading.Event) -> None:
        try:
            target()
        except BaseException as exc:  # any way a thread ends is reported
            self._thread_ended(name, describe_error(exc), exc_info=True)
        else:
            self.loops.forget(name)
            if not stop.is_set():
                self._thread_ended(name, "returned while the daemon was running")

    def _thread_ended(self, name: str, error: str, exc_info: bool = False) -> None:
        self._died = name
        self._signal = self._signal or f"thread {name} ended"
        self._log.critical("thread.died", thread=name, error=error, exc_info=exc_info)
        self._quiet_workers(self.workers)
        self.stop.set()

    def _hear(self, event: Event) -> None:
        """The listener's hand-off. When too many wait the listener waits here, and
        stops reading from Redis, until there is room."""
        while not self.stop.is_set():
            try:
                self.heard.put(event, timeout=0.5)
                return
            except queue.Full:
                self.listener.beat()  # held back by a busy dispatcher, not stuck
                continue

    def _resubscribed(self) -> None:
        self.sweeper.request_resync()
        if self.metrics is not None and self.listener.subscriptions > 1:
            self.metrics.reconnects.inc()

    def _dispatch(self, timeout: float, pause: Callable[[], None]) -> bool:
        """Apply what is pending, taking more of the events heard first; False when there
        was nothing to do. On an error, what was not applied stays pending."""
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
        self._backoff.wait(self.stop)

    def _take(self, timeout: float) -> list[Event]:
        try:
            events = [self.heard.get(timeout=timeout) if timeout else self.heard.get_nowait()]
        except queue.Empty:
            return []
        while len(events) < defaults.WINDOW_EVENTS:
            try:
                events.append(self.heard.get_nowait())
            except queue.Empty:
                break
        return events

    def _check_redis(self) -> None:
        """Fail fast on a Redis that would never notify; an unreachable one is retried."""
        try:
            if self.listen:
                flags = ensure_notifications(self.target, self.redis, self.configure_redis)
                if flags is None:
                    self._log.warning(
                        "redis.unverified",
                        error="this Redis user may not CONFIG GET: make sure redis.conf has "
                        f"notify-keyspace-events {defaults.NOTIFY_FLAGS}",
                    )
            warn_eviction(self.target, self.redis, self._log)
        except CONNECTION_ERRORS as exc:
            self._log.warning("redis.unreachable", error=describe_error(exc))

    def _install_signal_handlers(self) -> None:
        # Only set flags here: the handler runs on the main thread between two of its
        # steps, so taking a lock the main thread may hold (the log's, a worker's stop
        # event's) could deadlock. The main loop quiets the workers within 0.5 s.
        def request_stop(signum: int, _frame: FrameType | None) -> None:
            if self._signal is None:
                self._signal = signal.Signals(signum).name
            self.stop.set()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGHUP, lambda _signum, _frame: self._reload.set())


def _engine_for(config: Config) -> Engine:
    """The workers' engine: a statement ends before the lease it runs under can lapse."""
    io_timeout = config.worker.lease_seconds * defaults.STATEMENT_SHARE_OF_LEASE
    return make_engine(config.database, io_timeout, config.worker.concurrency)


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())

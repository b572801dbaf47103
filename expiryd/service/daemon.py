"""`expiryd run`: the daemon, assembled from components that a launcher starts, watches
and stops (see `component` and `launcher`):

- the listener hears keyevent notifications and hands them to the dispatcher;
- the dispatcher applies them in order: ledger updates, and claims that queue each
  expiry as a durable job;
- the sweeper keeps the ledger up to date and nudges keys whose deadline has passed;
- `concurrency` workers each lease a batch of jobs, run their handlers and settle them;
- the pulse tells systemd how the daemon is, and writes the heartbeat `status` reads.

SIGHUP applies a changed config in place (see `reload`): the workers take up the new
routes, handlers and settings at their next batch, while the listener stays subscribed.
SIGTERM or SIGINT stops it: no more work is taken, and the groups in hand and the events
heard are finished within `grace_seconds`.

`expiryd work` runs the workers alone, to drain the same queue from more processes.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping

import redis
from redis.sentinel import SentinelConnectionPool
from sqlalchemy import Engine

from expiryd import __version__, defaults
from expiryd.backoff import Backoff
from expiryd.component import Component
from expiryd.config import Config
from expiryd.config import load as load_config
from expiryd.database.engine import make_engine
from expiryd.errors import ServiceError, UserError
from expiryd.handlers import Handler, build_handlers
from expiryd.liveness import Loops
from expiryd.logs import describe_error, get_logger
from expiryd.outcomes import Outcome
from expiryd.redact import redact_url, scrub
from expiryd.redis.cluster_watch import ClusterWatch
from expiryd.redis.connections import (
    CONNECTION_ERRORS,
    RedisTarget,
    ensure_notifications,
    nodes_of,
    warn_eviction,
)
from expiryd.redis.keyfilter import KeyFilter
from expiryd.redis.keyspace import Keyspace
from expiryd.redis.sentinel import PrimaryWatch
from expiryd.redis.shard import Shard, Wiring
from expiryd.redis.shards import Shards
from expiryd.service import reload
from expiryd.service.launcher import Launcher
from expiryd.service.metrics import Metrics, metrics_address_free
from expiryd.service.notify import Notifier
from expiryd.service.pulse import Pulse
from expiryd.service.report import Reporter
from expiryd.tally import Tally
from expiryd.worker import Worker, report_unqueued

EXIT_THREAD_DIED = 70
"""The exit code when one of expiryd's threads ended unexpectedly (EX_SOFTWARE)."""


class Daemon:
    def __init__(self, config: Config, configure_redis: bool = False, listen: bool = True) -> None:
        self.config = config
        self.listen = listen
        self.configure_redis = configure_redis
        self.target = RedisTarget.from_url(config.redis.url)
        self.keyspace = keyspace = Keyspace(config.redis.prefix, self.target.db)
        self.keys = KeyFilter(
            keyspace.prefix.encode(),
            config.redis.max_key_bytes,
            routed_only=self.target.cluster is not None,
            routes=config.routes,
        )
        self.engine = _engine_for(config)
        self.redis = self.target.client()
        self.notifier = Notifier.from_environ()
        self.loops = Loops(self.notifier.watchdog_seconds or defaults.STALL_SECONDS)
        self.launcher = Launcher(loops=self.loops)
        self.tally = Tally()
        wiring = Wiring(
            settings=config.redis,
            keys=self.keys,
            loops=self.loops,
            report_unqueued=functools.partial(report_unqueued, self.tally),
            wake_workers=self._wake_workers,
            on_subscribed=self._subscribed,
            configure_redis=configure_redis,
        )
        self.shards = Shards(
            target=self.target,
            client=self.redis,
            prefix=config.redis.prefix,
            wiring=wiring,
            listen=listen,
        )
        self.shards.start = self.launcher.start
        handlers = build_handlers(config, self.engine, self.redis)
        self.code = reload.CodeWatch()
        self.code.note(config)
        self._numbered = 0
        self.workers = [self._worker(config, handlers) for _ in range(config.worker.concurrency)]
        """The workers taking jobs now; those a reload retired finish on their own."""
        self._old_engines: list[Engine] = []
        """Engines a reload replaced: batches begun before it may still use them."""
        listener = self.shards.all[0].listener
        self.primary_watch = (
            PrimaryWatch(
                group=self.target.group,
                listening_on=lambda: listener.address,
                moved=self._primary_moved,
                beat=self.loops.beat_for("primary_watch"),
            )
            if self.target.group is not None and listener is not None
            else None
        )
        self.cluster_watch = (
            ClusterWatch(
                read=self.shards.topology,
                changed=self.shards.follow,
                beat=self.loops.beat_for("cluster_watch"),
            )
            if self.target.cluster is not None
            else None
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
            self.shards.subscribed if listen else None,
            self.metrics,
            self.shards.keyspaces,
        )
        self.pulse = Pulse(
            notifier=self.notifier, loops=self.loops, ready=self._ready, report=self.reporter.report
        )
        self._backoff = Backoff.reconnecting()
        self._log = get_logger()

    def run(self) -> int:
        self._check_redis()
        self.launcher.install_signal_handlers()
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
        try:
            self.launcher.start(self.pulse)
            self._upgrade_queue()
            for worker in self.workers:
                self.launcher.start(worker)
            if self.listen:
                for component in self._listening():
                    self.launcher.start(component)
            if self.cluster_watch is not None:  # it starts the components of new shards
                self.launcher.start(self.cluster_watch)
            self.launcher.serve(reload=self._consider_reload)
            return self._stop()
        finally:
            if self.metrics is not None:
                self.metrics.close()

    def _stop(self) -> int:
        """Everything within one deadline, `grace_seconds` from now: the batches in hand,
        the events heard and not yet applied, the components."""
        grace = self.config.worker.grace_seconds
        self._log.info("expiryd.stopping", signal=self.launcher.reason, in_hand=self._in_hand())
        self.notifier.send(
            STOPPING=1,
            STATUS=f"stopping: finishing {self._in_hand()} expiries in hand",
            EXTEND_TIMEOUT_USEC=int((grace + defaults.STOP_MARGIN_SECONDS) * 1_000_000),
        )
        deadline = time.monotonic() + grace
        self.launcher.quiet()
        if self.primary_watch is not None:
            self.primary_watch.stop(deadline)
        if self.cluster_watch is not None:
            self.cluster_watch.stop(deadline)
        self.shards.stop(deadline)
        self.launcher.stop(deadline)
        unfinished = self._in_hand()
        # The pulse's last word (the daemon gone) may take a moment more.
        self.pulse.join(time.monotonic() + defaults.PULSE_JOIN_SECONDS)
        for engine in (self.engine, *self._old_engines):
            engine.dispose()
        counts = self.tally.by_outcome()
        self._log.info(
            "expiryd.stopped",
            unfinished=unfinished,
            unapplied_events=self.shards.unapplied,
            **{o.value: counts[o] for o in Outcome},
        )
        return EXIT_THREAD_DIED if self.launcher.died else 0

    def _listening(self) -> list[Component]:
        """What `run` starts besides the workers, in the order to start them."""
        watch = [self.primary_watch] if self.primary_watch is not None else []
        return [*self.shards.components(), *watch]

    def _primary_moved(self, why: str) -> None:
        """A Sentinel group's primary moved: the listener subscribes again where it is now,
        and connections still on the old one are closed once they are handed back."""
        for shard in self.shards.all:
            if shard.listener is not None:
                shard.listener.follow(why)
        for client in (self.redis, self.reporter.client):
            pool = client.connection_pool
            if isinstance(pool, SentinelConnectionPool):
                pool.get_master_address()

    def _upgrade_queue(self) -> None:
        """Before any worker touches the queue: move in the jobs an earlier expiryd queued."""
        while not self.launcher.asked_to_stop():
            try:
                moved = sum(queue.upgrade() for queue in self.shards.queues())
            except (redis.RedisError, *CONNECTION_ERRORS) as exc:
                error = describe_error(exc)
                self._backoff.wait_after(self.launcher, self._log, "queue.unavailable", error)
                continue
            if moved:
                self._log.warning("jobs.upgraded", jobs=moved)
            self._backoff.reset()
            return

    def _consider_reload(self) -> None:
        """SIGHUP: apply the config as it is now, in place, if it changed and is sound."""
        path = None if self.config.source == "(defaults)" else self.config.source
        try:
            verdict = reload.judge(self.config, lambda: load_config(path), self._same_redis)
            if verdict.config is not None:
                self._apply(verdict.config, verdict.fields)
                return
        except Exception as exc:  # a bug in a reload must not skip the stop that follows
            self._log.error("config.reload_failed", error=describe_error(exc), exc_info=True)
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
        self.keys.routes = config.routes
        for worker in self.workers:
            worker.use(config.routes, handlers, config.worker)
        self._resize_workers(config, handlers)
        if old_engine is not engine:
            # Its idle connections close now; a batch in hand that still uses it opens
            # what it needs, closed at exit.
            old_engine.dispose()
            self._old_engines.append(old_engine)
        stale = self.code.changed(config)
        self.code.note(config)
        self._log.info("config.reloaded", **fields, code_changed_on_disk=stale or None)
        self.notifier.send(READY=1, STATUS="running")

    def _build(self, config: Config) -> tuple[Engine, dict[str, Handler]]:
        """The engine (the running one, unless what it is made of changed) and the
        handlers of `config`; the metrics moved to its address."""
        same = _engine_settings(config) == _engine_settings(self.config)
        engine = self.engine if same else _engine_for(config)
        try:
            handlers = build_handlers(config, engine, self.redis)
            self._move_metrics(config)
        except BaseException:
            if engine is not self.engine:
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
        return self.shards.ready()

    def _in_hand(self) -> int:
        """Expiries the workers hold, those a reload retired included."""
        return sum(c.in_hand for c in self.launcher.components if isinstance(c, Worker))

    def _wake_workers(self) -> None:
        for worker in self.workers:
            worker.wake.set()

    def _worker(self, config: Config, handlers: Mapping[str, Handler]) -> Worker:
        self._numbered += 1
        name = f"worker-{self._numbered}"
        return Worker(
            queues=self.shards.queues,
            routes=config.routes,
            handlers=handlers,
            settings=config.worker,
            keys=self.keys,
            tally=self.tally,
            beat=self.loops.beat_for(name),
            name=name,
        )

    def _resize_workers(self, config: Config, handlers: Mapping[str, Handler]) -> None:
        """`concurrency` workers from now: new ones started, extra ones quieted (they
        finish the group in hand, then end)."""
        wanted = config.worker.concurrency
        while len(self.workers) < wanted:
            worker = self._worker(config, handlers)
            self.workers.append(worker)
            self.launcher.start(worker)
        for worker in self.workers[wanted:]:
            worker.quiet()
        del self.workers[wanted:]

    def _move_metrics(self, config: Config) -> None:
        """Serve the metrics at the new config's address, if it changed; where they were
        when that fails (the reload is then refused)."""
        listen, old = config.metrics.listen, self.config.metrics.listen
        if listen == old:
            return
        if listen is not None and (old is None or listen[1] != old[1]):
            metrics_address_free(*listen)  # a port of our own is free once we let it go
        if self.metrics is not None:
            self.metrics.close()
        if listen is None:
            return
        if self.metrics is None:
            self.metrics = Metrics([r.name for r in config.routes])
            self.tally.watchers.append(self.metrics.observe)
            self.reporter.use_metrics(self.metrics)
        try:
            self.metrics.serve(*listen)
        except Exception:
            if old is not None:
                self.metrics.serve(*old)
            raise
        self._log.info("metrics.serving", url=f"http://{listen[0]}:{listen[1]}/metrics")

    def _subscribed(self, shard: Shard) -> None:
        assert shard.sweeper is not None and shard.listener is not None
        shard.sweeper.request_resync()
        if self.metrics is not None and shard.listener.subscriptions > 1:
            self.metrics.reconnects.inc()

    def _check_redis(self) -> None:
        """Fail fast on a Redis that would never notify; an unreachable one is retried."""
        try:
            if self.listen and (self.target.group or self.target.cluster):
                self._check_nodes()
            elif self.listen:
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

    def _check_nodes(self) -> None:
        """Every node of a Sentinel group or cluster: a primary without the flags is
        refused (or set, with --configure-redis); a replica without them is reported,
        since it would hear nothing once promoted."""
        for role, node in nodes_of(self.target):
            client = self.target.node_client(node)
            try:
                warn_eviction(
                    self.target.node_target(node) if self.target.cluster else self.target,
                    client,
                    self._log,
                )
                ensure_notifications(self.target, client, self.configure_redis, node)
            except ServiceError as exc:
                if role == "primary":
                    raise
                self._log.warning(
                    "redis.replica_unready", node=f"{node[0]}:{node[1]}", error=str(exc)
                )
            finally:
                client.close()


def _engine_settings(config: Config) -> tuple[object, ...]:
    """What the workers' engine is made of."""
    return config.database, config.worker.lease_seconds, config.worker.concurrency


def _engine_for(config: Config) -> Engine:
    """The workers' engine: a statement ends before the lease it runs under can lapse."""
    io_timeout = config.worker.lease_seconds * defaults.STATEMENT_SHARE_OF_LEASE
    return make_engine(config.database, io_timeout, config.worker.concurrency)

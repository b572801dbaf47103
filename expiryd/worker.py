"""The worker: a component that leases jobs from the queue, runs each one's handler, and
settles it: acknowledged after the database commit, retried later, or dead-lettered.
One `expiry.handled` line per attempt.

Quieted, it finishes the group in hand and puts the rest of its batch back. In burst
mode (`work(burst=True)`, for tests) it returns once no job is ready.

Each job is handled on its own: whatever goes wrong with one (a handler raising anything
at all, a deadline that does not fit a date, a log line that cannot be written) becomes
that job's outcome, and the rest of the batch is settled as usual.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from expiryd import defaults, liveness
from expiryd.backoff import Backoff
from expiryd.component import Component
from expiryd.config import WorkerSettings
from expiryd.expiry import Expiry
from expiryd.handlers import Handler
from expiryd.lease import Lease, LeaseRenewer
from expiryd.liveness import Beat, no_beat
from expiryd.logs import describe_error, display_key, get_logger
from expiryd.outcomes import Ending, Outcome, Result
from expiryd.redis.connections import CONNECTION_ERRORS
from expiryd.redis.keyfilter import KeyFilter
from expiryd.redis.queue import MISSING, Job, JobQueue, Settlement
from expiryd.retries import Busy, Verdict, classify
from expiryd.routes import Route, match_route
from expiryd.tally import Tally

_log = get_logger()

_SETTLE = {
    Outcome.APPLIED: "ack",
    Outcome.SKIPPED: "ack",
    Outcome.UNROUTED: "ack",
    Outcome.RETRY: "retry",
    Outcome.DEAD: "dead",
}


@dataclass
class Ruling:
    """What one attempt came to, and the log fields it adds."""

    result: Result
    fields: dict[str, Any] = field(default_factory=dict)
    delay_ms: int = 0
    action: str | None = None
    """How to settle it, when not by its outcome: "defer" is a retry that uses no attempt."""

    @classmethod
    def dead(cls, error: str) -> Ruling:
        return cls(Result(Outcome.DEAD), {"error": error})

    def settlement(self, job_id: str) -> Settlement:
        action = self.action or _SETTLE[self.result.outcome]
        return Settlement(job_id, action, self.delay_ms, self.fields.get("error", ""))


@dataclass(frozen=True)
class _Plan:
    """What a reload hands a worker: its routes, their handlers, its settings."""

    routes: Sequence[Route]
    handlers: Mapping[str, Handler]
    settings: WorkerSettings


@dataclass
class _Attempt:
    """One job on its way through a batch."""

    job: Job
    line: dict[str, Any]
    route: Route | None = None
    expiry: Expiry | None = None
    ruling: Ruling | None = None
    duration_ms: float = 0.0


class Worker(Component):
    def __init__(
        self,
        *,
        queues: Callable[[], Sequence[JobQueue]],
        routes: Sequence[Route],
        handlers: Mapping[str, Handler],
        settings: WorkerSettings,
        keys: KeyFilter,
        tally: Tally,
        beat: Beat = no_beat,
        name: str = "worker",
    ) -> None:
        super().__init__(name=name, beat=beat)
        self.queues = queues
        """The queues to take jobs from: one per shard (see `redis.shard`)."""
        self._turns = 0
        self.routes = routes
        self.handlers = handlers
        self.settings = settings
        self.keys = keys
        self.tally = tally
        self.wake = threading.Event()
        """Set when jobs were queued, so an idle worker need not wait for its next poll."""
        self.in_hand = 0
        self._token = uuid.uuid4().hex
        self._backoff = Backoff.reconnecting(beat)
        self._log = get_logger()
        self._next: _Plan | None = None
        self._plan_lock = threading.Lock()

    def use(
        self, routes: Sequence[Route], handlers: Mapping[str, Handler], settings: WorkerSettings
    ) -> None:
        """Run with these from the next batch on (a reload); the batch in hand finishes
        with what it started with."""
        with self._plan_lock:
            self._next = _Plan(routes, handlers, settings)
        self.wake.set()

    def quiet(self) -> None:
        super().quiet()
        self.wake.set()

    def _take_up_plan(self) -> None:
        with self._plan_lock:
            plan, self._next = self._next, None
        if plan is not None:
            self.routes, self.handlers, self.settings = plan.routes, plan.handlers, plan.settings
            liveness.bind(self.beat, self.settings.lease_seconds)

    def run(self) -> None:
        self.work()

    def work(self, burst: bool = False) -> None:
        """Take and run batches until quieted, or with `burst` until no job is ready; the
        group in hand is always finished."""
        # A handler's statement ends within the lease (the driver's timeouts).
        liveness.bind(self.beat, self.settings.lease_seconds)
        while not self.halt.is_set():
            self.beat()
            self._take_up_plan()
            try:
                if not self._turn(wait=not burst) and burst:
                    return
                self._backoff.reset()
            except CONNECTION_ERRORS as exc:
                # Jobs taken and not settled are handed out again when their lease lapses.
                self._pause("queue.unavailable", exc)
            except Exception as exc:  # a bug or a Redis refusal must not end the worker
                self._pause("worker.crashed", exc, exc_info=True)

    def _turn(self, wait: bool) -> bool:
        """Run one batch, from the first queue that has one (each turn starts with the
        next queue, so that none waits behind a busy one), or (with `wait`) wait a while
        for one; whether there was one."""
        queues = list(self.queues())
        self._turns += 1
        failed: Exception | None = None
        for n in range(len(queues)):
            queue = queues[(self._turns + n) % len(queues)]
            try:
                self._requeue_lapsed(queue)
                jobs, missing = queue.take(
                    self.settings.batch_size, self.settings.lease_seconds * 1000, self._token
                )
            except CONNECTION_ERRORS as exc:  # one shard away: the others' jobs still run
                failed = exc
                continue
            if missing:
                self._log.error("jobs.missing", jobs=missing, reason=MISSING)
            if jobs:
                self._run_batch(queue, jobs)
                return True
        if failed is not None:
            raise failed
        if wait and not self.halt.is_set():
            self.wake.wait(defaults.WORKER_POLL_SECONDS)
            self.wake.clear()
        return False

    def _requeue_lapsed(self, queue: JobQueue) -> None:
        """Hand out again the jobs whose worker's lease lapsed (it was killed mid-batch),
        about once a second per process: every process that takes jobs does, `run` or
        `work`, so they are taken up while any process is left to take them."""
        requeued, missing = queue.requeue_lapsed_if_due(defaults.REQUEUE_LAPSED_SECONDS)
        if requeued:
            self._log.warning("jobs.requeued", jobs=requeued, reason="lease lapsed")
        if missing:
            self._log.error("jobs.missing", jobs=missing, reason=MISSING)

    def _pause(self, event: str, exc: Exception, exc_info: bool = False) -> None:
        self._backoff.wait_after(self.halt, self._log, event, describe_error(exc), exc_info)

    def _run_batch(self, queue: JobQueue, jobs: list[Job]) -> None:
        """Run the jobs, a route's group at a time, each group marked as it starts and
        settled as it ends. After a worker died with some of them in hand, one job at a
        time instead, so that a job which kills its worker is found out and takes no
        other job's progress with it. Meanwhile a renewer renews the lease. Once quieted,
        or once the lease of some was lost, what is not started yet is put back, using up
        no attempt."""
        self.in_hand = len(jobs)
        lease = Lease({job.id for job in jobs})
        renewer = LeaseRenewer(
            queue=queue,
            token=self._token,
            lease=lease,
            lease_seconds=self.settings.lease_seconds,
        )
        renewer.start()
        try:
            size = 1 if any(job.lapses for job in jobs) else len(jobs)
            for start in range(0, len(jobs), size):
                for settled in self._run_jobs(queue, jobs[start : start + size], lease):
                    self._settle(queue, settled, lease)
                    if self.halt.is_set() or lease.lost:
                        break
                if self.halt.is_set() or lease.lost:
                    self._settle(queue, [Settlement(i, "defer") for i in lease.held], lease)
                    return
        finally:
            renewer.stop(time.monotonic() + self.settings.lease_seconds)
            self.in_hand = 0

    def _settle(self, queue: JobQueue, done: list[Settlement], lease: Lease) -> None:
        with lease.lock:
            ours = queue.settle(self._token, done)
            lease.held.difference_update(s.job_id for s in done)
        self.in_hand -= len(done)
        lease.count_held(ours, len(done))

    def _run_jobs(
        self, queue: JobQueue, jobs: list[Job], lease: Lease
    ) -> Iterator[list[Settlement]]:
        """Settlements, a group at a time: first the jobs decided without a handler
        (unrouted, out of attempts), then each route's group in one handler call."""
        attempts = [self._prepare(job) for job in jobs]
        decided = [a for a in attempts if a.ruling is not None]
        if decided:
            yield [self._conclude(a) for a in decided]
        groups: dict[str, list[_Attempt]] = {}
        for attempt in attempts:
            if attempt.ruling is None:
                groups.setdefault(attempt.route.name, []).append(attempt)  # type: ignore[union-attr]
        for name, group in groups.items():
            if self.halt.is_set():
                return  # quieted: the groups not started are put back
            marked = queue.mark_started(self._token, [a.job.id for a in group])
            lease.count_held(marked, len(group))
            if lease.lost:
                return
            lease.running, lease.slow_warnings = (name, len(group), time.monotonic()), 0
            # Each of a group's statements, or each expiry run on its own, beats again
            # (`liveness.beat_here`); one that runs past the lease is stuck, and the
            # watchdog may restart the daemon.
            self.beat(self.settings.lease_seconds)
            try:
                yield self._run_group(self.handlers[name], group)
            finally:
                lease.running = None

    def _run_group(self, handler: Handler, group: list[_Attempt]) -> list[Settlement]:
        # Lateness as the group starts: the groups before it in the batch took their time.
        now_ms = _now_ms()
        for attempt in group:
            attempt.line["lateness_ms"] = _lateness_ms(attempt.job, now_ms)
        started = time.perf_counter()
        try:
            outcomes = handler.run_many([a.expiry for a in group])  # type: ignore[misc]
        except BaseException as exc:  # a handler that raises for the whole group
            outcomes = [exc] * len(group)
        share = (time.perf_counter() - started) * 1000 / len(group)
        for attempt, outcome in zip(group, outcomes, strict=True):
            attempt.ruling = self._rule(attempt, outcome)
            attempt.duration_ms = share
        return [self._conclude(a) for a in group]

    def _prepare(self, job: Job) -> _Attempt:
        """The job's log fields, and the expiry its handler gets, or already its ruling."""
        attempt = _Attempt(job, {"key": None, "route": None, "handler": None})
        try:
            attempt.line["key"] = display_key(job.key)
            deadline = _datetime(job.deadline_ms)
            attempt.line.update(_timing(job, deadline))
            self._route(attempt, deadline)
        except Exception as exc:  # expiryd's own step failed: this job's outcome, not a crash
            error = f"expiryd could not handle this job: {describe_error(exc)}"
            attempt.ruling = Ruling.dead(error)
        return attempt

    def _route(self, attempt: _Attempt, deadline: datetime | None) -> None:
        job = attempt.job
        if job.unreadable:
            attempt.ruling = Ruling.dead(job.unreadable)
            return
        if job.lapses >= defaults.MAX_LAPSES:
            error = f"its worker stopped {job.lapses} times while running it (killed or crashed)"
            attempt.ruling = Ruling.dead(error)
            return
        key, reason = self.keys.decode(job.key)
        match = match_route(self.routes, key) if key is not None else None
        if match is None:
            reason = reason or "no route matches"
            attempt.ruling = Ruling(Result(Outcome.UNROUTED), {"reason": reason})
            return
        attempt.line.update(match.fields)
        attempt.line.update(route=match.route.name, handler=match.route.handler)
        attempt.route = match.route
        policy = match.route.retry
        if job.attempt >= policy.attempts:
            error = f"attempts exhausted ({job.attempt} of {policy.attempts} taken)"
            attempt.ruling = Ruling.dead(error)
            return
        attempt.expiry = Expiry(
            key=key or "",
            route=match.route.name,
            fields=match.fields,
            value=job.value,
            deadline=deadline,
            id=job.id,
            attempt=job.attempt + 1,
            first_run=job.attempt == 0 and job.lapses == 0 and not job.error,
        )

    def _conclude(self, attempt: _Attempt) -> Settlement:
        ruling = attempt.ruling or Ruling.dead("expiryd reached no outcome for this job")
        self._log_line(attempt.line, ruling, attempt.duration_ms)
        return ruling.settlement(attempt.job.id)

    def _rule(self, attempt: _Attempt, outcome: Ending) -> Ruling:
        """What one expiry's outcome comes to: its result, a retry, or a dead letter."""
        if not isinstance(outcome, BaseException):
            return Ruling(outcome)
        error = describe_error(outcome)
        if isinstance(outcome, Busy):
            delay_ms = int(defaults.BUSY_RETRY_SECONDS * 1000)
            fields = {"error": error, "retry_in_s": defaults.BUSY_RETRY_SECONDS}
            return Ruling(Result(Outcome.RETRY), fields, delay_ms, action="defer")
        policy = attempt.route.retry  # type: ignore[union-attr]
        number = attempt.job.attempt + 1
        if classify(outcome) is Verdict.RETRY and number < policy.attempts:
            delay_ms = int(policy.delay(number) * 1000)
            fields = {"error": error, "retry_in_s": round(delay_ms / 1000, 2)}
            return Ruling(Result(Outcome.RETRY), fields, delay_ms)
        return Ruling.dead(error)

    def _log_line(self, line: dict[str, Any], ruling: Ruling, duration_ms: float) -> None:
        log_handled(self.tally, line, ruling, duration_ms)


def log_handled(tally: Tally, line: dict[str, Any], ruling: Ruling, duration_ms: float) -> None:
    """The `expiry.handled` line of one attempt, counted in `tally`."""
    outcome = ruling.result.outcome
    tally.record(line["route"], outcome, line.get("lateness_ms"))
    write = {Outcome.DEAD: _log.error, Outcome.RETRY: _log.warning}.get(outcome, _log.info)
    fields = {
        **line,
        "outcome": outcome.value,
        "rows": ruling.result.rows,
        "duration_ms": round(duration_ms, 3),
        **ruling.fields,
    }
    if ruling.result.committed_by_attempt is not None:
        fields["committed_by_attempt"] = ruling.result.committed_by_attempt
    try:
        write("expiry.handled", **fields)
    except Exception as exc:  # never lose the line: write what is sure to fit
        write("expiry.handled", key=line["key"], outcome=outcome.value, log_error=str(exc))


def report_unqueued(tally: Tally, raw_key: bytes, reason: str) -> None:
    """An expiry not worth queueing (its key no route can take): one line, no job."""
    line = {"key": display_key(raw_key), "route": None, "handler": None}
    log_handled(tally, line, Ruling(Result(Outcome.UNROUTED), {"reason": reason}), 0.0)


def _timing(job: Job, deadline: datetime | None) -> dict[str, Any]:
    """The log fields that say which expiry this is, when it was due and how it was found;
    its lateness as of now, measured again when its group starts."""
    return {
        "expiry_id": job.id,
        "attempt": job.attempt + 1,
        "deadline": deadline.isoformat(timespec="milliseconds") if deadline else None,
        "lateness_ms": _lateness_ms(job, _now_ms()),
        "recovered": job.source.value == "recovery",
        "source": job.source.value,
    }


def _lateness_ms(job: Job, now_ms: int) -> int | None:
    """How long after its deadline the job is handled at `now_ms`; None without one."""
    return None if job.deadline_ms is None else now_ms - job.deadline_ms


def _now_ms() -> int:
    return int(time.time() * 1000)


def _datetime(ms: int | None) -> datetime | None:
    """The moment `ms` after the epoch, or None when there is none or no date holds it."""
    if ms is None:
        return None
    try:
        return datetime.fromtimestamp(ms / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None

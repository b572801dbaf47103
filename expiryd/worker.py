"""The worker: leases jobs from the queue, runs each one's handler, and settles it:
acknowledged after the database commit, retried later, or dead-lettered. One
`expiry.handled` line per attempt.

Each job is handled on its own: whatever goes wrong with one (a handler raising anything
at all, a deadline that does not fit a date, a log line that cannot be written) becomes
that job's outcome, and the rest of the batch is settled as usual.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from expiryd import defaults
from expiryd.backoff import Backoff
from expiryd.config import WorkerSettings
from expiryd.connections import CONNECTION_ERRORS
from expiryd.expiry import Expiry
from expiryd.handlers import Handler
from expiryd.logs import describe_error, display_key, get_logger
from expiryd.outcomes import Outcome, Result
from expiryd.queue import Job, JobQueue, Settlement
from expiryd.retries import Verdict, classify
from expiryd.routes import Match, Route, match_route

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

    @classmethod
    def dead(cls, error: str) -> Ruling:
        return cls(Result(Outcome.DEAD), {"error": error})

    def settlement(self, job_id: str) -> Settlement:
        action = _SETTLE[self.result.outcome]
        return Settlement(job_id, action, self.delay_ms, self.fields.get("error", ""))


class Worker:
    def __init__(
        self,
        queue: JobQueue,
        routes: Sequence[Route],
        handlers: Mapping[str, Handler],
        settings: WorkerSettings,
        max_key_bytes: int,
        stop: threading.Event,
    ) -> None:
        self.queue = queue
        self.routes = routes
        self.handlers = handlers
        self.settings = settings
        self.max_key_bytes = max_key_bytes
        self.stop = stop
        self.wake = threading.Event()
        """Set when jobs were queued, so an idle worker need not wait for its next poll."""
        self.counts: Counter[Outcome] = Counter()
        self.in_hand = 0
        self._token = uuid.uuid4().hex
        self._backoff = Backoff(defaults.RECONNECT_BASE_SECONDS, defaults.RECONNECT_CAP_SECONDS)
        self._lock = threading.Lock()
        self._log = get_logger()

    def run(self) -> None:
        """Take and run batches until `stop` is set; the batch in hand is always finished."""
        while not self.stop.is_set():
            try:
                jobs = self.queue.take(
                    self.settings.batch_size, self.settings.lease_seconds * 1000, self._token
                )
                if jobs:
                    self._run_batch(jobs)
                else:
                    self.wake.wait(defaults.WORKER_POLL_SECONDS)
                    self.wake.clear()
                self._backoff.reset()
            except CONNECTION_ERRORS as exc:
                # Jobs taken and not settled are handed out again when their lease lapses.
                self._pause("queue.unavailable", exc)
            except Exception as exc:  # a bug or a Redis refusal must not end the worker
                self._pause("worker.crashed", exc, exc_info=True)

    def _pause(self, event: str, exc: Exception, exc_info: bool = False) -> None:
        self._backoff.wait_after(self.stop, self._log, event, describe_error(exc), exc_info)

    def _run_batch(self, jobs: list[Job]) -> None:
        """Run the jobs and settle them together; one at a time instead after a worker
        died with some of them in hand (so that a job which kills its worker is found
        out and takes no other job's progress with it), and once stopping (so that what
        is done before the grace runs out is not done again). The lease of what is still
        held is renewed between jobs; one handler call that outlasts the whole lease can
        still see its jobs handed out again."""
        careful = any(job.lapses for job in jobs)
        if careful:
            self.queue.mark(self._token, [job.id for job in jobs], started=False)
        done: list[Settlement] = []
        self.in_hand = len(jobs)
        renewed = time.monotonic()
        try:
            for job in jobs:
                if careful:
                    self.queue.mark(self._token, [job.id], started=True)
                done.append(self.handle(job))
                self.in_hand -= 1
                if careful or self.stop.is_set():
                    self.queue.settle(self._token, done)
                    done = []
                if time.monotonic() - renewed > self.settings.lease_seconds / 3:
                    # The heartbeat: a live worker's lease does not lapse between jobs.
                    lease_ms = self.settings.lease_seconds * 1000
                    self.queue.extend(self._token, [j.id for j in jobs], lease_ms)
                    renewed = time.monotonic()
            self.queue.settle(self._token, done)
        finally:
            self.in_hand = 0

    def handle(self, job: Job) -> Settlement:
        """Route and run one job; log one line; say what becomes of it."""
        started = time.perf_counter()
        line: dict[str, Any] = {"key": display_key(job.key), "route": None, "handler": None}
        try:
            line.update(_timing(job))
            ruling = self._attempt(job, line)
        except Exception as exc:  # expiryd's own step failed: this job's outcome, not a crash
            ruling = Ruling.dead(f"expiryd could not handle this job: {describe_error(exc)}")
        self._log_line(line, ruling, started)
        return ruling.settlement(job.id)

    def _attempt(self, job: Job, line: dict[str, Any]) -> Ruling:
        if job.lapses >= defaults.MAX_LAPSES:
            return Ruling.dead(
                f"its worker stopped {job.lapses} times while running it (killed or crashed)"
            )
        key, reason = self._decode(job.key)
        match = match_route(self.routes, key) if key is not None else None
        if match is None:
            return Ruling(Result(Outcome.UNROUTED), {"reason": reason or "no route matches"})
        line.update(match.fields)
        line.update(route=match.route.name, handler=match.route.handler)
        return self._run(match, key or "", job)

    def report_unqueued(self, raw_key: bytes, reason: str) -> None:
        """An expiry not worth queueing (its key is too long to route): one line, no job."""
        line = {"key": display_key(raw_key), "route": None, "handler": None}
        self._log_line(line, Ruling(Result(Outcome.UNROUTED), {"reason": reason}), None)

    def reason_unqueued(self, raw_key: bytes) -> str | None:
        if len(raw_key) > self.max_key_bytes:
            return f"key is {len(raw_key)} bytes, over max_key_bytes={self.max_key_bytes}"
        return None

    def _decode(self, raw_key: bytes) -> tuple[str | None, str | None]:
        reason = self.reason_unqueued(raw_key)
        if reason:
            return None, reason
        try:
            return raw_key.decode("utf-8"), None
        except UnicodeDecodeError:
            return None, "key is not valid UTF-8"

    def _run(self, match: Match, key: str, job: Job) -> Ruling:
        policy = match.route.retry
        attempt = job.attempt + 1
        if attempt > policy.attempts:
            return Ruling.dead(f"attempts exhausted ({job.attempt} of {policy.attempts} taken)")
        expiry = Expiry(
            key=key,
            route=match.route.name,
            fields=match.fields,
            value=job.value,
            deadline=_datetime(job.deadline_ms),
            id=job.id,
            attempt=attempt,
        )
        try:
            return Ruling(self.handlers[match.route.name](expiry))
        except BaseException as exc:  # whatever a handler raises is its outcome
            error = describe_error(exc)
            if classify(exc) is Verdict.RETRY and attempt < policy.attempts:
                delay_ms = int(policy.delay(attempt) * 1000)
                return Ruling(
                    Result(Outcome.RETRY),
                    {"error": error, "retry_in_s": round(delay_ms / 1000, 2)},
                    delay_ms,
                )
            return Ruling.dead(error)

    def _log_line(self, line: dict[str, Any], ruling: Ruling, started: float | None) -> None:
        outcome = ruling.result.outcome
        with self._lock:
            self.counts[outcome] += 1
        log = {
            Outcome.DEAD: self._log.error,
            Outcome.RETRY: self._log.warning,
        }.get(outcome, self._log.info)
        duration = None if started is None else (time.perf_counter() - started) * 1000
        fields = {
            **line,
            "outcome": outcome.value,
            "rows": ruling.result.rows,
            "duration_ms": round(duration or 0.0, 3),
            **ruling.fields,
        }
        try:
            log("expiry.handled", **fields)
        except Exception as exc:  # never lose the line: write what is sure to fit
            log("expiry.handled", key=line["key"], outcome=outcome.value, log_error=str(exc))


def _timing(job: Job) -> dict[str, Any]:
    """The log fields that say which expiry this is, when it was due and how it was found."""
    deadline = _datetime(job.deadline_ms)
    late = None if job.deadline_ms is None else int(time.time() * 1000) - job.deadline_ms
    return {
        "expiry_id": job.id,
        "attempt": job.attempt + 1,
        "deadline": deadline.isoformat(timespec="milliseconds") if deadline else None,
        "lateness_ms": late,
        "recovered": job.source.value == "recovery",
        "source": job.source.value,
    }


def _datetime(ms: int | None) -> datetime | None:
    """The moment `ms` after the epoch, or None when there is none or no date holds it."""
    if ms is None:
        return None
    try:
        return datetime.fromtimestamp(ms / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None

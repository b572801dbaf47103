"""The worker: leases jobs from the queue, runs each one's handler, and settles it:
acknowledged after the database commit, retried later, or dead-lettered. One
`expiry.handled` line per attempt."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
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
        self.in_hand = len(jobs)
        try:
            settled = [self.handle(job) for job in jobs]
            self.queue.settle(self._token, settled)
        finally:
            self.in_hand = 0

    def handle(self, job: Job) -> Settlement:
        """Route and run one job; log one line; say what becomes of it."""
        started = time.perf_counter()
        key, reason = self._decode(job.key)
        match = match_route(self.routes, key) if key is not None else None
        line: dict[str, Any] = {"key": display_key(job.key), "route": None, "handler": None}
        line.update(_timing(job))
        delay_ms = 0
        if match is None:
            result, extra = Result(Outcome.UNROUTED), {"reason": reason or "no route matches"}
        else:
            result, extra, delay_ms = self._run(match, key or "", job)
            line.update(route=match.route.name, handler=match.route.handler, **match.fields)
        self._log_line(line, result, extra, started)
        return Settlement(job.id, _SETTLE[result.outcome], delay_ms, extra.get("error", ""))

    def report_unqueued(self, raw_key: bytes, reason: str) -> None:
        """An expiry not worth queueing (its key is too long to route): one line, no job."""
        line = {"key": display_key(raw_key), "route": None, "handler": None}
        self._log_line(line, Result(Outcome.UNROUTED), {"reason": reason}, time.perf_counter())

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

    def _run(self, match: Match, key: str, job: Job) -> tuple[Result, dict[str, Any], int]:
        """The result, the log fields it adds, and for a retry the delay in ms."""
        policy = match.route.retry
        if job.attempt > policy.attempts:
            error = f"attempts exhausted ({job.attempt - 1} of {policy.attempts} taken)"
            return Result(Outcome.DEAD), {"error": error}, 0
        expiry = Expiry(
            key=key,
            route=match.route.name,
            fields=match.fields,
            value=job.value,
            deadline=_datetime(job.deadline_ms),
            id=job.id,
            attempt=job.attempt,
        )
        try:
            return self.handlers[match.route.name](expiry), {}, 0
        except Exception as exc:  # any handler failure is an outcome, not a crash
            error = describe_error(exc)
            if classify(exc) is Verdict.RETRY and job.attempt < policy.attempts:
                delay_ms = int(policy.delay(job.attempt) * 1000)
                fields = {"error": error, "retry_in_s": round(delay_ms / 1000, 2)}
                return Result(Outcome.RETRY), fields, delay_ms
            return Result(Outcome.DEAD), {"error": error}, 0

    def _log_line(
        self, line: dict[str, Any], result: Result, extra: dict[str, Any], started: float
    ) -> None:
        with self._lock:
            self.counts[result.outcome] += 1
        log = {
            Outcome.DEAD: self._log.error,
            Outcome.RETRY: self._log.warning,
        }.get(result.outcome, self._log.info)
        log(
            "expiry.handled",
            **line,
            outcome=result.outcome.value,
            rows=result.rows,
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
            **extra,
        )


def _timing(job: Job) -> dict[str, Any]:
    """The log fields that say which expiry this is, when it was due and how it was found."""
    deadline = _datetime(job.deadline_ms)
    late = None if job.deadline_ms is None else int(time.time() * 1000) - job.deadline_ms
    return {
        "expiry_id": job.id,
        "attempt": job.attempt,
        "deadline": deadline.isoformat(timespec="milliseconds") if deadline else None,
        "lateness_ms": late,
        "recovered": job.source.value == "recovery",
        "source": job.source.value,
    }


def _datetime(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC)

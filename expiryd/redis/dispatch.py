"""From Redis events to ledger changes and queued jobs, in the order the events came.

Events wait in `pending` until Redis has taken them: a window of mixed events goes to
Redis in one round trip, and a window that fails stays, whole, to be tried again.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from expiryd import defaults
from expiryd.logs import display_key, get_logger
from expiryd.redis.keyspace import Keyspace
from expiryd.redis.ledger import Applied, Ledger, Op, Step
from expiryd.redis.listener import Event, Kind

STEPS = {
    Kind.EXPIRED: Op.CLAIM,
    Kind.EXPIRE: Op.RECORD,
    Kind.RENAME_TO: Op.RECORD,
    Kind.RESTORE: Op.RECORD,
    Kind.COPY_TO: Op.RECORD,
    Kind.MOVE_TO: Op.RECORD,
    Kind.DEL: Op.FORGET,
    Kind.PERSIST: Op.FORGET,
    Kind.RENAME_FROM: Op.FORGET,
    Kind.MOVE_FROM: Op.FORGET,
}
"""What each kind of event does to the ledger (markers aside)."""

FRESH_KEYS_LIMIT = 100_000
"""Keys remembered as found gone when recorded; far more than are ever in flight."""


@dataclass
class _Window:
    """The next events to apply: `size` events from the front of `pending`, the steps
    they make (built once, so a retry sends the same ids), and a marker that ends it."""

    size: int
    steps: list[Step]
    marker: int | None = None
    applied: bool = False
    reported: list[tuple[bytes, str]] = field(default_factory=list)


class Dispatcher:
    def __init__(
        self,
        ledger: Ledger,
        keyspace: Keyspace,
        marker_prefix: str,
        unqueued_reason: Callable[[bytes], str | None],
        report_unqueued: Callable[[bytes, str], None],
        queued: Callable[[], None],
    ) -> None:
        self.ledger = ledger
        self.keyspace = keyspace
        self.marker_prefix = marker_prefix.encode()
        self.unqueued_reason = unqueued_reason
        self.report_unqueued = report_unqueued
        self.queued = queued
        self.pending: deque[Event] = deque()
        self._window: _Window | None = None
        self._fresh: dict[bytes, int] = {}
        self._marker_ms = 0
        self._marker_heard = threading.Condition()
        self._log = get_logger()

    def wait_for_marker(self, marker_ms: int, timeout: float) -> bool:
        """Whether this daemon's marker of `marker_ms` (or a later one) has been heard
        and reconciled, waiting up to `timeout` seconds for it."""
        with self._marker_heard:
            return self._marker_heard.wait_for(lambda: self._marker_ms >= marker_ms, timeout)

    def run_pending(self) -> None:
        """Apply every pending event in order. A Redis error propagates with the events
        not yet applied still pending."""
        while self.pending:
            window = self._window or self._build()
            self._window = window
            if not window.applied:
                if window.steps:
                    self._after(window.steps, self.ledger.apply(window.steps))
                window.applied = True
                for key, reason in window.reported:
                    self.report_unqueued(key, reason)
            if window.marker is not None:
                if self.ledger.reconcile(window.marker):
                    self.queued()
                with self._marker_heard:
                    self._marker_ms = max(self._marker_ms, window.marker)
                    self._marker_heard.notify_all()
            for _ in range(window.size):
                self.pending.popleft()
            self._window = None

    def _build(self) -> _Window:
        window = _Window(0, [])
        for event in self.pending:
            window.size += 1
            if event.kind is Kind.MARKER:
                window.marker = self._marker_time(event.data)
                if window.marker is not None:
                    break
            elif not self.keyspace.owns(event.data):
                self._add_step(window, event)
            if len(window.steps) >= defaults.WINDOW_EVENTS:
                break
        return window

    def _add_step(self, window: _Window, event: Event) -> None:
        op = STEPS[event.kind]
        reason = self.unqueued_reason(event.data)
        if reason:
            if op is Op.CLAIM:
                window.reported.append((event.data, reason))
        elif op is Op.CLAIM:
            window.steps.append(Step(op, event.data, fresh_ms=self._fresh.get(event.data)))
        else:
            window.steps.append(Step(op, event.data))

    def _marker_time(self, payload: bytes) -> int | None:
        """A marker of this daemon's sweeper: the Redis time it was published at."""
        if not payload.startswith(self.marker_prefix):
            return None
        return int(payload[len(self.marker_prefix) :])

    def _after(self, steps: list[Step], applied: Applied) -> None:
        if len(self._fresh) > FRESH_KEYS_LIMIT:
            self._fresh.clear()
        queued = False
        for step, reply in zip(steps, applied.replies, strict=True):
            if step.op is Op.RECORD and reply == -2:
                self._fresh[step.key] = applied.now_ms
            elif step.op is not Op.RECORD:
                self._fresh.pop(step.key, None)
            if step.op is Op.CLAIM:
                if reply == 0:
                    self._log.debug("expiry.duplicate", key=display_key(step.key))
                else:
                    queued = True
        if applied.oversize_values:
            self._log.warning(
                "ledger.value_not_captured",
                keys=applied.oversize_values,
                reason=f"value over max_value_bytes={self.ledger.max_value_bytes}",
            )
        if queued:
            self.queued()

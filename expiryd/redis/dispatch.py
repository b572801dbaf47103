"""The dispatcher: a component that turns the events the listener heard into ledger
changes and queued jobs, in the order the events came.

Heard events wait in `heard` (bounded: when it is full the listener waits), then in
`pending` until Redis has taken them: a window of mixed events goes to Redis in one
round trip, and a window that fails stays, whole, to be tried again.

Quieting it changes nothing: it applies what is heard until it is stopped, and then,
once the listener has ended, what is left, by the stop's deadline. In burst mode
(`work(burst=True)`, for tests) it returns once nothing heard is left.
"""

from __future__ import annotations

import queue
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from expiryd import defaults
from expiryd.backoff import Backoff
from expiryd.component import Component
from expiryd.liveness import Beat, no_beat
from expiryd.logs import describe_error, display_key, get_logger
from expiryd.redis.cluster_events import ClusterEvents
from expiryd.redis.connections import CONNECTION_ERRORS
from expiryd.redis.keyfilter import KeyFilter
from expiryd.redis.ledger import Applied, Ledger, Op, Step
from expiryd.redis.listener import Event, Kind
from expiryd.redis.markers import Markers

STEPS = {
    Kind.EXPIRED: Op.CLAIM,
    Kind.EXPIRE: Op.RECORD,
    Kind.RENAME_TO: Op.RECORD,
    Kind.RESTORE: Op.RECORD_MOVED,
    Kind.COPY_TO: Op.RECORD,
    Kind.MOVE_TO: Op.RECORD,
    Kind.DEL: Op.FORGET,
    Kind.PERSIST: Op.FORGET,
    Kind.RENAME_FROM: Op.FORGET,
    Kind.MOVE_FROM: Op.FORGET,
    Kind.RECORD_AGAIN: Op.RECORD_MOVED,
}
"""What each kind of event does to the ledger (markers aside)."""

FRESH_KEYS_LIMIT = 100_000
"""Keys remembered as found gone when recorded; far more than are ever in flight."""
RECORD_AGAIN_SECONDS = 0.5
RECORD_AGAIN_LIMIT = 100_000


@dataclass
class _Window:
    """The next events to apply: `size` events from the front of `pending`, the steps
    they make (built once, so a retry sends the same ids), and a marker that ends it."""

    size: int
    steps: list[Step]
    marker: int | None = None
    applied: bool = False
    reported: list[tuple[bytes, str]] = field(default_factory=list)


class Dispatcher(Component):
    def __init__(
        self,
        *,
        ledger: Ledger,
        markers: Markers,
        keys: KeyFilter,
        report_unqueued: Callable[[bytes, str], None],
        wake_workers: Callable[[], None],
        beat: Beat = no_beat,
        cluster: ClusterEvents | None = None,
    ) -> None:
        super().__init__(name="dispatcher", beat=beat)
        self.cluster = cluster
        """In a cluster: which steps of a window the ledger may apply, which keys to
        record again, and the deadlines of moved keys to hand over (see
        `cluster_events`)."""
        self.ledger = ledger
        self.markers = markers
        self.keys = keys
        self.report_unqueued = report_unqueued
        self.wake_workers = wake_workers
        """Called when jobs were queued."""
        self.heard: queue.Queue[Event] = queue.Queue(maxsize=defaults.HEARD_EVENTS_LIMIT)
        self.pending: deque[Event] = deque()
        self._window: _Window | None = None
        self._fresh: dict[bytes, int] = {}
        self._record_again: dict[bytes, float] = {}
        """Keys in a slot the node is importing -> when to record them again."""
        self._deadline = 0.0
        self._backoff = Backoff.reconnecting(beat)
        self._log = get_logger()

    def hear(self, event: Event, timeout: float) -> bool:
        """Take an event from the listener; False if none could be taken within
        `timeout` seconds, too many waiting already."""
        try:
            self.heard.put(event, timeout=timeout)
        except queue.Full:
            return False
        return True

    @property
    def unapplied(self) -> int:
        return len(self.pending) + self.heard.qsize()

    def quiet(self) -> None:
        """Nothing: what the listener hears until it has ended is still applied."""

    def stop(self, deadline: float) -> bool:
        self._deadline = deadline
        return super().stop(deadline)

    def run(self) -> None:
        self.work()
        while time.monotonic() < self._deadline and self._turn(0):
            pass

    def work(self, burst: bool = False) -> None:
        """Apply events as they are heard until stopped, or with `burst` until none is
        left."""
        while not self.halt.is_set():
            self.beat()
            if not self._turn(0 if burst else 0.5) and burst:
                return

    def _turn(self, timeout: float) -> bool:
        """Apply what is pending, taking more of the events heard first; False when there
        was nothing to do. On an error, what was not applied stays pending."""
        if len(self.pending) < defaults.WINDOW_EVENTS:
            self.pending.extend(self._take(0 if self.pending else timeout))
        if self._record_again:
            self.pending.extend(self._due_again())
        if self.cluster is not None:
            self.cluster.tend()
        if not self.pending:
            return False
        try:
            self.run_pending()
            self._backoff.reset()
        except redis.RedisError as exc:  # unreachable, or refusing (out of memory, busy)
            self._failed("ledger.unavailable", exc)
        except Exception as exc:  # a bug must not lose the events: they are tried again
            self._failed("dispatcher.crashed", exc, exc_info=True)
        return True

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

    def _note(self, steps: list[Step], applied: Applied) -> tuple[bool, list[bytes]]:
        """Remember the keys found gone when recorded; whether a job was queued, and the
        keys whose record met a slot the node does not serve."""
        if len(self._fresh) > FRESH_KEYS_LIMIT:
            self._fresh.clear()
        queued, elsewhere = False, []
        for step, reply in zip(steps, applied.replies, strict=True):
            if step.op in (Op.RECORD, Op.RECORD_MOVED):
                if reply == -2 and step.op is Op.RECORD:
                    self._fresh[step.key] = applied.now_ms
                elif reply == -3:
                    elsewhere.append(step.key)
                continue
            self._fresh.pop(step.key, None)
            if step.op is Op.CLAIM and reply == 0:
                self._log.debug("expiry.duplicate", key=display_key(step.key))
            elif step.op is Op.CLAIM:
                queued = True
        return queued, elsewhere

    def _due_again(self) -> list[Event]:
        """A record of each key whose time to be recorded again has come. It reads the
        key as it is then, so it may come after the key's later events; it changes nothing
        for a key gone or without a TTL, which its own events (heard) took care of."""
        now = time.monotonic()
        due = [key for key, at in self._record_again.items() if at <= now]
        for key in due:
            del self._record_again[key]
        return [Event(Kind.RECORD_AGAIN, key) for key in due]

    def _record_later(self, keys: list[bytes]) -> None:
        assert self.cluster is not None
        try:
            here = self.cluster.importing(keys)
        except (redis.RedisError, *CONNECTION_ERRORS):  # asked again after the next try
            here = keys
        at = time.monotonic() + RECORD_AGAIN_SECONDS
        room = max(0, RECORD_AGAIN_LIMIT - len(self._record_again))
        self._record_again.update(dict.fromkeys(here[:room], at))
        if len(here) > room:
            dropped = here[room:]
            self._log.warning(
                "ledger.record_dropped", keys=len(dropped), first=display_key(dropped[0])
            )

    def _failed(self, event: str, exc: Exception, exc_info: bool = False) -> None:
        self._log.warning(
            event,
            error=describe_error(exc),
            pending=len(self.pending),
            attempt=self._backoff.failures + 1,
            exc_info=exc_info,
        )
        if self.halt.is_set():
            time.sleep(0.1)  # stopping: tried again until the stop's deadline
        else:
            self._backoff.wait(self.halt)

    def run_pending(self) -> None:
        """Apply every pending event in order. A Redis error propagates with the events
        not yet applied still pending."""
        while self.pending:
            window = self._window or self._build()
            self._window = window
            if not window.applied:
                steps = self.cluster.vet(window.steps) if self.cluster else window.steps
                if steps:
                    self._after(steps, self.ledger.apply(steps))
                window.applied = True
                for key, reason in window.reported:
                    self.report_unqueued(key, reason)
            if window.marker is not None:
                if self.ledger.reconcile(window.marker):
                    self.wake_workers()
                self.markers.heard(window.marker)
            for _ in range(window.size):
                self.pending.popleft()
            self._window = None

    def _build(self) -> _Window:
        window = _Window(0, [])
        for event in self.pending:
            window.size += 1
            if event.kind is Kind.MARKER:
                window.marker = self.markers.time_of(event.data)
                if window.marker is not None:
                    break
            elif not self.keys.owns(event.data):
                self._add_step(window, event)
            if len(window.steps) >= defaults.WINDOW_EVENTS:
                break
        return window

    def _add_step(self, window: _Window, event: Event) -> None:
        op = STEPS[event.kind]
        reason = self.keys.refusal(event.data)
        if reason:
            if op is Op.CLAIM:
                window.reported.append((event.data, reason))
        elif op is Op.CLAIM:
            window.steps.append(Step(op, event.data, fresh_ms=self._fresh.get(event.data)))
        else:
            window.steps.append(Step(op, event.data))

    def _after(self, steps: list[Step], applied: Applied) -> None:
        queued, elsewhere = self._note(steps, applied)
        if applied.oversize_values:
            self._log.warning(
                "ledger.value_not_captured",
                keys=applied.oversize_values,
                reason=f"value over max_value_bytes={self.ledger.max_value_bytes}",
            )
        if elsewhere and self.cluster is not None:
            self._record_later(elsewhere)
        if queued:
            self.wake_workers()

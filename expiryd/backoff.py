"""How long to wait before trying again: exponential, capped, with jitter; or, for a
failure that is cheap to try again (Redis refusing connections), a short steady interval,
with log lines only now and then."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any, Protocol

from expiryd import defaults
from expiryd.liveness import Beat, no_beat


def backoff_ceiling(attempt: int, base: float, cap: float) -> float:
    """The longest wait before attempt `attempt + 1`: `base`, doubled per failure after
    the first, at most `cap`."""
    return min(cap, base * 2 ** max(attempt - 1, 0))


def backoff_delay(
    attempt: int, base: float, cap: float, rand: Callable[[], float] = random.random
) -> float:
    """Seconds to wait before attempt `attempt + 1` (attempt counts from 1).

    Half the delay is fixed and half random ("equal jitter"), so clients that failed
    together spread out but none retries at once.
    """
    ceiling = backoff_ceiling(attempt, base, cap)
    return ceiling / 2 + rand() * ceiling / 2


class LogPace:
    """Which failures of a run tried again every fraction of a second get a log line: the
    first, then one each time the backoff's ceiling has passed since the last (`base`,
    doubling, at most `cap` apart), so a long outage writes a line every `cap` seconds."""

    def __init__(
        self, base: float, cap: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.base, self.cap = base, cap
        self._clock = clock
        self._lines = 0
        self._next_at = 0.0

    def due(self) -> bool:
        """Whether this failure gets a line; if so, the next one waits longer."""
        now = self._clock()
        if self._lines and now < self._next_at:
            return False
        self._lines += 1
        self._next_at = now + backoff_ceiling(self._lines, self.base, self.cap)
        return True

    def reset(self) -> None:
        self._lines = 0


class Stop(Protocol):
    """What a wait ends early on: a `threading.Event`, or the launcher on the main thread."""

    def wait(self, timeout: float) -> bool: ...


class Backoff:
    """Counts failures in a row; `next_delay` grows with them, `reset` after a success."""

    def __init__(
        self,
        base: float,
        cap: float,
        beat: Beat = no_beat,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base, self.cap = base, cap
        self.beat = beat
        """The waiting loop's beat: a wait says beforehand how long it may be quiet."""
        self.failures = 0
        """Failures in a row, of either kind: the `attempt` of a log line."""
        self._grown = 0
        """Those waited out with a growing delay, which set how long the next one is:
        failures retried at a steady interval do not lengthen it."""
        self._pace = LogPace(base, cap, clock)

    @classmethod
    def reconnecting(cls, beat: Beat = no_beat) -> Backoff:
        """The backoff between attempts to reach Redis or the database again."""
        return cls(defaults.RECONNECT_BASE_SECONDS, defaults.RECONNECT_CAP_SECONDS, beat)

    def next_delay(self) -> float:
        self.failures += 1
        self._grown += 1
        return backoff_delay(self._grown, self.base, self.cap)

    def reset(self) -> None:
        self.failures = self._grown = 0
        self._pace.reset()

    def wait(self, stop: Stop) -> None:
        """Wait out the next delay, or until `stop` is set."""
        self._wait(stop, self.next_delay())

    def wait_after(
        self, stop: Stop, log: Any, event: str, error: str, exc_info: bool = False
    ) -> None:
        """Log a failure as `event` (a warning, with the traceback if asked) and wait out
        the next delay, or until `stop` is set."""
        delay = self.next_delay()
        extra = {"exc_info": True} if exc_info else {}
        log.warning(event, error=error, attempt=self.failures, retry_in_s=round(delay, 2), **extra)
        self._wait(stop, delay)

    def wait_steadily_after(
        self, stop: Stop, log: Any, event: str, error: str, interval: float
    ) -> None:
        """Count a failure that is cheap to try again, log it as `event` if the log's pace
        allows (the first of a run, then less and less often), and wait `interval`, or
        until `stop` is set."""
        self.failures += 1
        if self._pace.due():
            log.warning(event, error=error, attempt=self.failures, retry_in_s=round(interval, 2))
        self._wait(stop, interval)

    def _wait(self, stop: Stop, seconds: float) -> None:
        self.beat(seconds)
        stop.wait(seconds)

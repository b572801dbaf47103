"""How long to wait before trying again: exponential, capped, with jitter."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import Any

from expiryd import defaults
from expiryd.liveness import Beat, no_beat


def backoff_delay(
    attempt: int, base: float, cap: float, rand: Callable[[], float] = random.random
) -> float:
    """Seconds to wait before attempt `attempt + 1` (attempt counts from 1).

    Half the delay is fixed and half random ("equal jitter"), so clients that failed
    together spread out but none retries at once.
    """
    ceiling = min(cap, base * 2 ** max(attempt - 1, 0))
    return ceiling / 2 + rand() * ceiling / 2


class Backoff:
    """Counts failures in a row; `next_delay` grows with them, `reset` after a success."""

    def __init__(self, base: float, cap: float, beat: Beat = no_beat) -> None:
        self.base, self.cap = base, cap
        self.beat = beat
        """The waiting loop's beat: a wait says beforehand how long it may be quiet."""
        self.failures = 0

    @classmethod
    def reconnecting(cls, beat: Beat = no_beat) -> Backoff:
        """The backoff between attempts to reach Redis or the database again."""
        return cls(defaults.RECONNECT_BASE_SECONDS, defaults.RECONNECT_CAP_SECONDS, beat)

    def next_delay(self) -> float:
        self.failures += 1
        return backoff_delay(self.failures, self.base, self.cap)

    def reset(self) -> None:
        self.failures = 0

    def wait(self, stop: threading.Event) -> None:
        """Wait out the next delay, or until `stop` is set."""
        delay = self.next_delay()
        self.beat(delay)
        stop.wait(delay)

    def wait_after(
        self, stop: threading.Event, log: Any, event: str, error: str, exc_info: bool = False
    ) -> None:
        """Log a failure as `event` (a warning, with the traceback if asked) and wait out
        the next delay, or until `stop` is set."""
        delay = self.next_delay()
        extra = {"exc_info": True} if exc_info else {}
        log.warning(event, error=error, attempt=self.failures, retry_in_s=round(delay, 2), **extra)
        self.beat(delay)
        stop.wait(delay)

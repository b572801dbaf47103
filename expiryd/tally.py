"""What the daemon handled since it started: counts by route and outcome, and when it last
settled one. Workers record every outcome here; the status line, `expiryd status` and the
metrics read it. A hook (the metrics' lateness histogram) may watch each record."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

from expiryd.outcomes import Outcome

UNROUTED = ""
"""The route of an expiry that matched none."""

Watcher = Callable[[str, Outcome, float | None], None]
"""Called with (route, outcome, lateness in seconds or None) for every record."""


class Tally:
    def __init__(self) -> None:
        self.last_handled: float | None = None
        """When an expiry was last settled (seconds since the epoch)."""
        self.watchers: list[Watcher] = []
        self._counts: Counter[tuple[str, Outcome]] = Counter()
        self._lock = threading.Lock()

    def record(self, route: str | None, outcome: Outcome, lateness_ms: int | None) -> None:
        with self._lock:
            self._counts[route or UNROUTED, outcome] += 1
            self.last_handled = time.time()
        lateness = None if lateness_ms is None else lateness_ms / 1000
        for watch in self.watchers:
            watch(route or UNROUTED, outcome, lateness)

    def by_route(self) -> dict[tuple[str, Outcome], int]:
        with self._lock:
            return dict(self._counts)

    def by_outcome(self) -> Counter[Outcome]:
        totals: Counter[Outcome] = Counter()
        for (_, outcome), count in self.by_route().items():
            totals[outcome] += count
        return totals

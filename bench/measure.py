"""What a run is measured by: the CPU each process spent, peak memory, and each order's
lateness as the database's audit trigger stamped it."""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (its threads included)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


class CpuMeter:
    """CPU seconds each named process spends between `start` and `stop`. A process that
    exits on the way counts what it had spent when last sampled (`sample` it while it
    runs, before it is reaped)."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self.spent: dict[str, float] = {}
        self._started: dict[str, float] = {}
        self._last: dict[str, float] = {}

    def start(self) -> None:
        self.sample()
        self._started = dict(self._last)

    def sample(self) -> None:
        for name, pid in self.pids.items():
            with contextlib.suppress(FileNotFoundError):  # exited: its last reading stands
                self._last[name] = cpu_seconds(pid)

    def stop(self) -> dict[str, float]:
        self.sample()
        self.spent = {name: self._last[name] - self._started[name] for name in self.pids}
        return self.spent


def wait_for_changes(
    changed: Callable[[], int],
    expected: int,
    until: float,
    stall_s: float = 60,
    alive: Callable[[], bool] = lambda: True,
) -> int:
    """Poll the audit until every expected change is in, `until` passes, nothing has
    changed for `stall_s`, or what makes the changes is gone; the count last seen."""
    seen, progressed = -1, time.monotonic()
    while time.time() < until and alive():
        count = changed()
        if count >= expected:
            return count
        if count != seen:
            seen, progressed = count, time.monotonic()
        elif time.monotonic() - progressed > stall_s:
            return count
        time.sleep(0.25)
    return changed()


@dataclass
class Result:
    """One system's run of one scenario."""

    name: str
    scenario: str
    orders: int
    deadlines: dict[str, float]
    """Order number -> its deadline (s since the epoch)."""
    changes: list[tuple[str, float]]
    """(order number, commit time) of every status change, in commit order."""
    cpu: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: float | None = None
    notes: list[str] = field(default_factory=list)
    commandstats: dict[str, dict[str, float]] = field(default_factory=dict)
    """Redis's INFO commandstats over the run (scripts' inner commands included)."""

    @property
    def changed_once(self) -> int:
        return len({sn for sn, _ in self.changes})

    @property
    def lost(self) -> int:
        return self.orders - self.changed_once

    @property
    def twice(self) -> int:
        return sum(n - 1 for n in Counter(sn for sn, _ in self.changes).values() if n > 1)

    def lateness(self) -> list[float]:
        """Seconds from each order's deadline to its (first) change, in commit order."""
        seen: set[str] = set()
        late = []
        for sn, at in self.changes:
            if sn not in seen:
                seen.add(sn)
                late.append(at - self.deadlines[sn])
        return late

    @property
    def first_deadline(self) -> float:
        return min(self.deadlines.values())

    @property
    def per_second(self) -> float:
        """Orders changed per second, from the first deadline to the last change."""
        if not self.changes:
            return 0.0
        span = self.changes[-1][1] - self.first_deadline
        return self.changed_once / span if span > 0 else float("inf")

    def cpu_per_thousand(self) -> dict[str, float]:
        done = max(self.changed_once, 1)
        return {name: spent * 1000 / done for name, spent in self.cpu.items()}


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(int(len(ordered) * q), len(ordered) - 1)]

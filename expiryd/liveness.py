"""Whether the daemon's loops are still moving.

Each loop that must keep going (listener, sweeper, dispatcher, workers) calls its `beat`
once a turn. A loop about to wait on purpose (a backoff, a handler group) says for how
long it may be quiet. systemd's watchdog is fed only while no loop is overdue, so a
daemon with one stuck thread is restarted rather than left running half-alive.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol


class Beat(Protocol):
    def __call__(self, quiet_for: float = 0.0) -> None: ...


def no_beat(quiet_for: float = 0.0) -> None:
    """The beat of a loop that nobody watches (tests, one-off commands)."""


class Loops:
    """The loops being watched and when each is next due to beat."""

    def __init__(self, allowance: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.allowance = allowance
        """How long a loop may go between beats before it counts as stuck."""
        self._clock = clock
        # Written by each loop without a lock (one dict item, atomic under the GIL): the
        # listener beats once per event. name -> (last beat, due by).
        self._beats: dict[str, tuple[float, float]] = {}

    def beat_for(self, name: str) -> Beat:
        """The `beat` of loop `name`, which is watched from its first beat on."""

        def beat(quiet_for: float = 0.0) -> None:
            now = self._clock()
            self._beats[name] = (now, now + self.allowance + quiet_for)

        return beat

    def forget(self, name: str) -> None:
        """A loop that ended on purpose is no longer waited for."""
        self._beats.pop(name, None)

    def overdue(self) -> dict[str, float]:
        """Each loop past its due time, with how long it has been silent (seconds)."""
        now = self._clock()
        beats = list(self._beats.items())
        return {name: now - last for name, (last, due) in beats if due < now}


_bound = threading.local()


def bind(beat: Beat, quiet_for: float) -> None:
    """Make `beat` this thread's, for `beat_here` to call with `quiet_for`."""
    _bound.beat, _bound.quiet_for = beat, quiet_for


def beat_here() -> None:
    """A sign of progress from deep inside a loop's work (each statement a worker's
    handler sends, each expiry of a group run one by one), so that a long group of quick
    steps is not taken for a stuck one. Nothing on a thread no loop bound."""
    beat = getattr(_bound, "beat", None)
    if beat is not None:
        beat(_bound.quiet_for)

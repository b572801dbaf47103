"""The daemon's pulse: a thread that tells systemd, once the daemon is ready, that it is
(READY=1), and that it is still alive while all its loops keep moving (WATCHDOG=1); and
every few seconds has the daemon report how it is doing (systemd's STATUS=, the heartbeat
that `expiryd status` reads). A loop that stops moving is logged as `loop.stalled`, with
or without systemd, and reported at once (the heartbeat names it, and `expiryd status`
is then not healthy); under systemd's watchdog the daemon is then restarted.

A component started first and stopped last: quieting it changes nothing, and once
stopped it reports the daemon gone.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from expiryd import defaults
from expiryd.component import Component
from expiryd.liveness import Loops
from expiryd.logs import get_logger
from expiryd.service.notify import Notifier

TICK_SECONDS = 0.25
START_EXTENSION_SECONDS = 30.0
"""While the daemon starts and its loops move, systemd's start timeout is pushed this far
ahead, again and again: a large DB's first scan may take minutes."""


class Pulse(Component):
    def __init__(
        self,
        *,
        notifier: Notifier,
        loops: Loops,
        ready: Callable[[], bool],
        report: Callable[[bool], None],
    ) -> None:
        super().__init__(name="pulse")
        self.notifier = notifier
        self.loops = loops
        self.ready = ready
        self.report = report
        self._stalled: set[str] = set()
        self._log = get_logger()

    def run(self) -> None:
        announced = False
        next_pet = next_report = next_extension = 0.0
        while not self.halt.wait(TICK_SECONDS):
            if not announced and self.ready():
                notified = self.notifier.send(READY=1)
                announced = True
                self._log.info("expiryd.ready", notified=notified)
                next_report = 0.0
            stalled = self._stalled
            alive = self._check_loops()
            if self._stalled != stalled:
                next_report = 0.0  # a loop stalled or resumed: `expiryd status` hears it now
            if not announced and alive and time.monotonic() >= next_extension:
                # Still starting (the first scan of a large DB), and moving: more time.
                self.notifier.send(EXTEND_TIMEOUT_USEC=int(START_EXTENSION_SECONDS * 1e6))
                next_extension = time.monotonic() + START_EXTENSION_SECONDS / 3
            watchdog = self.notifier.watchdog_seconds
            if watchdog and alive and time.monotonic() >= next_pet:
                self.notifier.send(WATCHDOG=1)
                next_pet = time.monotonic() + watchdog / 2
            if time.monotonic() >= next_report:
                self.report(False)
                next_report = time.monotonic() + defaults.STATUS_SECONDS
        self.report(True)  # the last word: gone, so that no report in flight outlives it

    def quiet(self) -> None:
        """Nothing: the pulse goes on while the others stop."""

    def _check_loops(self) -> bool:
        """Whether every loop is moving; each one that stalled is logged once a stall."""
        overdue = self.loops.overdue()
        for name in overdue.keys() - self._stalled:
            self._log.error(
                "loop.stalled",
                thread=name,
                silent_s=round(overdue[name], 1),
                watchdog=self.notifier.watchdog_seconds is not None,
            )
        for name in self._stalled - overdue.keys():
            self._log.warning("loop.resumed", thread=name)
        self._stalled = set(overdue)
        return not overdue

"""Sweep markers: how the sweeper learns that the listener has caught up.

1. A sweep (`ledger.sweep`, in one script) reads each key past its deadline, which makes
   Redis expire it and publish `expired` at once, and moves the incarnations found over
   to `gone`. Then, from inside the same script, it publishes a marker on the sweep
   channel: this daemon's `prefix` and the Redis time, after every event it caused.
2. The listener hears the marker on the channel like any event, and the dispatcher
   applies it in order: every event published before it has then been applied. So what
   is still in `gone` up to the marker's time expired while nobody listened, and
   `ledger.reconcile` recovers it. Then the dispatcher says the marker was `heard`.
3. The sweeper waits until its marker was heard (`wait`) before it sweeps again, so that
   a burst's keys are not found gone while their events are still on the way.

Several daemons share the channel; each one acts only on its own markers.
"""

from __future__ import annotations

import threading
import uuid


class Markers:
    def __init__(self) -> None:
        self.prefix = f"{uuid.uuid4().hex}:"
        """What this daemon's markers begin with, among other daemons' on the channel."""
        self._heard_ms = 0
        self._heard = threading.Condition()

    def time_of(self, payload: bytes) -> int | None:
        """The Redis time of one of this daemon's markers; None for another daemon's."""
        prefix = self.prefix.encode()
        if not payload.startswith(prefix):
            return None
        return int(payload[len(prefix) :])

    def heard(self, marker_ms: int) -> None:
        """Every event before the marker of `marker_ms` has been applied and reconciled."""
        with self._heard:
            self._heard_ms = max(self._heard_ms, marker_ms)
            self._heard.notify_all()

    def wait(self, marker_ms: int, timeout: float) -> bool:
        """Whether the marker of `marker_ms` (or a later one) was heard, waiting up to
        `timeout` seconds for it."""
        with self._heard:
            return self._heard.wait_for(lambda: self._heard_ms >= marker_ms, timeout)

"""The clock: brings the ledger up to date after every (re)subscribe, then nudges each
key whose deadline has passed, so expiries run on time whatever Redis's sampling does.
(The jobs of workers whose lease lapsed are handed out again by the workers themselves,
in every process that takes jobs.)

After a sweep that sent a marker, the next one waits until the listener has heard it
(see `markers`).
A listener behind by a burst's events would otherwise have every key of the burst found
gone by a sweep first (its `expired` event still on the way), and moved to `gone` and
back, for nothing: six Redis commands an expiry. Meanwhile a nudge could not be heard
any sooner than the events ahead of it anyway.
"""

from __future__ import annotations

import threading
import time

from expiryd import defaults
from expiryd.backoff import Backoff
from expiryd.component import Component
from expiryd.liveness import Beat, no_beat
from expiryd.logs import describe_error, get_logger
from expiryd.redis.connections import CONNECTION_ERRORS
from expiryd.redis.keyfilter import KeyFilter
from expiryd.redis.ledger import Ledger, SweepResult
from expiryd.redis.markers import Markers


class Sweeper(Component):
    def __init__(
        self,
        *,
        ledger: Ledger,
        markers: Markers,
        subscribed: threading.Event,
        keys: KeyFilter,
        beat: Beat = no_beat,
    ) -> None:
        super().__init__(name="sweeper", beat=beat)
        self.ledger = ledger
        self.markers = markers
        self.subscribed = subscribed
        """The listener's: set while it is subscribed."""
        self.keys = keys
        self.synced = threading.Event()
        """Set once the ledger was first brought up to date."""
        self._resync = threading.Event()
        self._backoff = Backoff.reconnecting(beat)
        self._log = get_logger()

    def request_resync(self) -> None:
        """Scan the watched DB again before the next sweep (after any reconnect)."""
        self._resync.set()

    def run(self) -> None:
        while not self.halt.is_set():
            self.beat()
            # Sweeping only while subscribed keeps a nudge's event from going unheard.
            if not self.subscribed.wait(0.1):
                continue
            try:
                result = self._step()
                self._backoff.reset()
            except _Stopped:
                return
            except CONNECTION_ERRORS as exc:
                self._back_off("ledger.unavailable", exc)
                continue
            except Exception as exc:  # a bug or a Redis refusal must not stop the clock
                self._back_off("sweeper.crashed", exc, exc_info=True)
                continue
            if result.marker_ms is not None:
                self._await_marker(result.marker_ms)
            if result.elsewhere:
                self._hand_over(result.elsewhere)
            if result.due < defaults.SWEEP_LIMIT:
                self.halt.wait(defaults.SWEEP_INTERVAL_SECONDS)

    def _hand_over(self, keys: list[bytes]) -> None:
        """Those of `keys` still in the ledger: none of this node's events claimed them."""
        try:
            self.ledger.hand_over_keys(keys)
        except Exception as exc:  # they are met again by the next sweep
            self._back_off("cluster.handover_failed", exc)

    def _await_marker(self, marker_ms: int) -> None:
        """Until the listener heard the marker, lost its connection (the marker with it),
        or a while passed (a listener failing to apply events: sweep again regardless)."""
        deadline = time.monotonic() + defaults.MARKER_WAIT_SECONDS
        while not self.halt.is_set() and self.subscribed.is_set():
            self.beat()
            if self.markers.wait(marker_ms, 0.1) or time.monotonic() >= deadline:
                return

    def _step(self) -> SweepResult:
        """One sweep, after a scan when one is due."""
        if self._resync.is_set():
            self._resync.clear()
            self._scan()
        return self.ledger.sweep(self.markers.prefix)

    def _scan(self) -> None:
        started = time.perf_counter()
        try:
            # First: a deadline that passes during a long scan is no longer ahead.
            forgotten = self.ledger.forget_deleted(self._progress)
            recorded = self.ledger.scan(self.keys, self._progress)
        except Exception:
            self._resync.set()
            raise
        duration_ms = round((time.perf_counter() - started) * 1000, 1)
        self._log.info(
            "ledger.synced",
            keys_with_ttl=recorded,
            forgotten=forgotten,
            duration_ms=duration_ms,
        )
        self.synced.set()

    def _progress(self, quiet_for: float = 0.0) -> None:
        """A long scan's beat, which also ends it once the sweeper is stopped."""
        if self.halt.is_set():
            raise _Stopped
        self.beat(quiet_for)

    def _back_off(self, event: str, exc: Exception, exc_info: bool = False) -> None:
        self._backoff.wait_after(self.halt, self._log, event, describe_error(exc), exc_info)


class _Stopped(Exception):
    """The sweeper was stopped in the middle of a scan."""

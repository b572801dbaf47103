"""The clock: brings the ledger up to date after every (re)subscribe, then nudges each
key whose deadline has passed, so expiries run on time whatever Redis's sampling does,
and hands out again the jobs of workers whose lease lapsed."""

from __future__ import annotations

import threading
import time

from expiryd import defaults
from expiryd.backoff import Backoff
from expiryd.connections import CONNECTION_ERRORS
from expiryd.ledger import Ledger
from expiryd.logs import describe_error, get_logger
from expiryd.queue import JobQueue


class Sweeper:
    def __init__(
        self,
        ledger: Ledger,
        queue: JobQueue,
        marker_prefix: str,
        subscribed: threading.Event,
        stop: threading.Event,
        max_key_bytes: int,
    ) -> None:
        self.ledger = ledger
        self.queue = queue
        self.marker_prefix = marker_prefix
        self.subscribed = subscribed
        self.stop = stop
        self.max_key_bytes = max_key_bytes
        self._resync = threading.Event()
        self._backoff = Backoff(defaults.RECONNECT_BASE_SECONDS, defaults.RECONNECT_CAP_SECONDS)
        self._log = get_logger()

    def request_resync(self) -> None:
        """Scan the watched DB again before the next sweep (after any reconnect)."""
        self._resync.set()

    def run(self) -> None:
        while not self.stop.is_set():
            # Sweeping only while subscribed keeps a nudge's event from going unheard.
            if not self.subscribed.wait(0.1):
                continue
            try:
                busy = self._step()
                self._backoff.reset()
            except CONNECTION_ERRORS as exc:
                self._back_off("ledger.unavailable", exc)
                continue
            except Exception as exc:  # a bug or a Redis refusal must not stop the clock
                self._back_off("sweeper.crashed", exc, exc_info=True)
                continue
            if not busy:
                self.stop.wait(defaults.SWEEP_INTERVAL_SECONDS)

    def _step(self) -> bool:
        """One sweep (after a scan when one is due); True when more keys were due than
        one sweep looks at."""
        if self._resync.is_set():
            self._resync.clear()
            self._scan()
        result = self.ledger.sweep(self.marker_prefix)
        requeued = self.queue.requeue_lapsed()
        if requeued:
            self._log.warning("jobs.requeued", jobs=requeued, reason="lease lapsed")
        return result.due >= defaults.SWEEP_LIMIT

    def _scan(self) -> None:
        started = time.perf_counter()
        try:
            recorded = self.ledger.scan(self.max_key_bytes)
        except Exception:
            self._resync.set()
            raise
        duration_ms = round((time.perf_counter() - started) * 1000, 1)
        self._log.info("ledger.synced", keys_with_ttl=recorded, duration_ms=duration_ms)

    def _back_off(self, event: str, exc: Exception, exc_info: bool = False) -> None:
        self._backoff.wait_after(self.stop, self._log, event, describe_error(exc), exc_info)

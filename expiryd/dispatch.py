"""From Redis events to ledger updates and queued jobs, in the order the events came."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

from expiryd.keyspace import Keyspace
from expiryd.ledger import Ledger
from expiryd.listener import Event, Kind
from expiryd.logs import get_logger

RECORDS = frozenset({Kind.EXPIRE, Kind.RENAME_TO})
FORGETS = frozenset({Kind.DEL, Kind.PERSIST, Kind.RENAME_FROM})


class Dispatcher:
    def __init__(
        self,
        ledger: Ledger,
        keyspace: Keyspace,
        marker_prefix: str,
        unqueued_reason: Callable[[bytes], str | None],
        report_unqueued: Callable[[bytes, str], None],
        queued: Callable[[], None],
    ) -> None:
        self.ledger = ledger
        self.keyspace = keyspace
        self.marker_prefix = marker_prefix.encode()
        self.unqueued_reason = unqueued_reason
        self.report_unqueued = report_unqueued
        self.queued = queued
        self._log = get_logger()

    def process(self, events: Sequence[Event]) -> None:
        """Runs of events of one kind go to Redis together; order is kept across kinds."""
        for kind, run in itertools.groupby(events, key=lambda event: event.kind):
            data = [event.data for event in run]
            if kind is Kind.MARKER:
                for payload in data:
                    self._reconcile(payload)
            elif kind is Kind.EXPIRED:
                self._expired(data)
            elif kind in RECORDS:
                self.ledger.record([key for key in data if self._tracked(key)])
            elif kind in FORGETS:
                self.ledger.forget([key for key in data if self._tracked(key)])

    def _tracked(self, key: bytes) -> bool:
        return not self.keyspace.owns(key) and self.unqueued_reason(key) is None

    def _expired(self, keys: list[bytes]) -> None:
        tracked = []
        for key in keys:
            if self.keyspace.owns(key):
                continue
            reason = self.unqueued_reason(key)
            if reason:
                self.report_unqueued(key, reason)
            else:
                tracked.append(key)
        jobs = self.ledger.claim(tracked)
        for key, job in zip(tracked, jobs, strict=True):
            if job is None:
                self._log.debug("expiry.duplicate", key=key.decode("utf-8", "backslashreplace"))
        if any(jobs):
            self.queued()

    def _reconcile(self, payload: bytes) -> None:
        """A marker of ours: every expiry announced before it has been claimed above."""
        if not payload.startswith(self.marker_prefix):
            return
        if self.ledger.reconcile(int(payload[len(self.marker_prefix) :])):
            self.queued()

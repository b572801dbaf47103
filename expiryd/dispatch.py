"""From Redis events to ledger updates and claimed expiries, in the order they came."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

from expiryd.keyspace import Keyspace
from expiryd.ledger import Claim, Ledger
from expiryd.listener import Event, Kind
from expiryd.logs import get_logger

RECORDS = frozenset({Kind.EXPIRE, Kind.RENAME_TO})
FORGETS = frozenset({Kind.DEL, Kind.PERSIST, Kind.RENAME_FROM})


class Dispatcher:
    def __init__(
        self,
        ledger: Ledger,
        keyspace: Keyspace,
        handle: Callable[[bytes, Claim | None], object],
        marker_prefix: str,
        max_key_bytes: int,
    ) -> None:
        self.ledger = ledger
        self.keyspace = keyspace
        self.handle = handle
        self.marker_prefix = marker_prefix.encode()
        self.max_key_bytes = max_key_bytes
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
        return not self.keyspace.owns(key) and len(key) <= self.max_key_bytes

    def _expired(self, keys: list[bytes]) -> None:
        tracked = [key for key in keys if self._tracked(key)]
        claims = dict(zip(tracked, self.ledger.claim(tracked), strict=True))
        for key in keys:
            if self.keyspace.owns(key):
                continue
            if key not in claims:
                self.handle(key, None)  # too long to keep in the ledger; unrouted anyway
            elif claims[key] is None:
                self._log.debug("expiry.duplicate", key=key.decode("utf-8", "backslashreplace"))
            else:
                self.handle(key, claims[key])

    def _reconcile(self, payload: bytes) -> None:
        """A marker of ours: every expiry announced before it has been claimed above."""
        if not payload.startswith(self.marker_prefix):
            return
        found_until_ms = int(payload[len(self.marker_prefix) :])
        for claim in self.ledger.reconcile(found_until_ms):
            self.handle(claim.key, claim)

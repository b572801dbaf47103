"""The outcome of one expiry: one name used by the worker, the logs and (later) metrics."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Outcome(enum.StrEnum):
    APPLIED = "applied"
    """The handler changed what it was meant to change."""
    SKIPPED = "skipped"
    """The handler ran and found nothing to change (e.g. the order was paid meanwhile)."""
    UNROUTED = "unrouted"
    """No route matched the key; nothing ran."""
    RETRY = "retry"
    """The handler failed in a way that may pass; it runs again after a backoff."""
    DEAD = "dead"
    """The handler failed for good, or ran out of attempts; the expiry is dead-lettered."""


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    rows: int | None = None
    committed_by_attempt: int | None = None
    """Set when an earlier attempt committed this result and its COMMIT's reply was lost:
    this attempt found it in the inbox and ran nothing."""

    @classmethod
    def from_rows(cls, rows: int | None) -> Result:
        """A statement that changed no row was skipped; an unknown count counts as applied."""
        if rows == 0:
            return cls(Outcome.SKIPPED, 0)
        return cls(Outcome.APPLIED, rows)


Ending = Result | BaseException
"""What became of one expiry of a group: its result, or what it raised (an exception
the worker rules on: retried, deferred or dead-lettered)."""

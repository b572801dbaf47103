"""The worker: one expired key in, one handler run, one `expiry.handled` log line out."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from expiryd.expiry import Expiry, Source
from expiryd.handlers import Handler
from expiryd.ledger import Claim
from expiryd.logs import describe_error, display_key, get_logger
from expiryd.outcomes import Outcome, Result
from expiryd.routes import Match, Route, match_route


@dataclass
class Worker:
    routes: Sequence[Route]
    handlers: Mapping[str, Handler]
    prefix: bytes
    max_key_bytes: int
    counts: Counter[Outcome] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._log = get_logger()

    def handle(self, raw_key: bytes, claim: Claim | None = None) -> Outcome | None:
        """Route and run one expired key; None for expiryd's own keys, which are not handled."""
        if raw_key.startswith(self.prefix):
            return None
        started = time.perf_counter()
        claim = claim or Claim(raw_key, Source.EVENT)
        key, reason = self._decode(raw_key)
        match = match_route(self.routes, key) if key is not None else None
        line: dict[str, Any] = {"key": display_key(raw_key), "route": None, "handler": None}
        line.update(_timing(claim))
        if match is None:
            result, extra = Result(Outcome.UNROUTED), {"reason": reason or "no route matches"}
        else:
            result, extra = self._run(match, key or "", claim)
            line.update(route=match.route.name, handler=match.route.handler, **match.fields)
        self.counts[result.outcome] += 1
        duration_ms = round((time.perf_counter() - started) * 1000, 3)
        log = self._log.error if result.outcome is Outcome.FAILED else self._log.info
        log(
            "expiry.handled",
            **line,
            outcome=result.outcome.value,
            rows=result.rows,
            duration_ms=duration_ms,
            **extra,
        )
        return result.outcome

    def _decode(self, raw_key: bytes) -> tuple[str | None, str | None]:
        if len(raw_key) > self.max_key_bytes:
            return None, f"key is {len(raw_key)} bytes, over max_key_bytes={self.max_key_bytes}"
        try:
            return raw_key.decode("utf-8"), None
        except UnicodeDecodeError:
            return None, "key is not valid UTF-8"

    def _run(self, match: Match, key: str, claim: Claim) -> tuple[Result, dict[str, Any]]:
        expiry = Expiry(
            key=key,
            route=match.route.name,
            fields=match.fields,
            value=claim.value,
            deadline=_datetime(claim.deadline_ms),
        )
        try:
            return self.handlers[match.route.name](expiry), {}
        except Exception as exc:  # any handler failure is an outcome, not a crash
            return Result(Outcome.FAILED), {"error": describe_error(exc)}


def _timing(claim: Claim) -> dict[str, Any]:
    """The log fields that say when the expiry was due and how it was found."""
    deadline = _datetime(claim.deadline_ms)
    lateness_ms = None if claim.deadline_ms is None else int(time.time() * 1000) - claim.deadline_ms
    return {
        "deadline": deadline.isoformat(timespec="milliseconds") if deadline else None,
        "lateness_ms": lateness_ms,
        "recovered": claim.source is Source.RECOVERY,
        "source": claim.source.value,
    }


def _datetime(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC)

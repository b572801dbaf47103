"""What a handler receives: one expired key, matched to its route."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime


class Source(enum.StrEnum):
    """How expiryd learned that a key expired."""

    EVENT = "event"
    """Redis announced it on its own."""
    NUDGE = "nudge"
    """expiryd looked at the key after its deadline, which made Redis expire it then."""
    RECOVERY = "recovery"
    """It expired while expiryd was not listening; found through the ledger afterwards."""


@dataclass(frozen=True)
class Expiry:
    """An expired key that matched a route.

    `fields` holds every `{placeholder}` of the route's pattern, e.g.
    ``{"order_sn": "SN123", "use_mysql": "1"}`` for ``{order_sn}:{use_mysql}``.
    `value` is the key's value when its TTL was set (only with capture_values), and
    `deadline` the moment its TTL ran out (UTC), when expiryd recorded it.
    """

    key: str
    route: str
    fields: dict[str, str] = field(default_factory=dict)
    value: bytes | None = None
    deadline: datetime | None = None
    id: str = ""
    """Stable across attempts: the same expiry has the same id however often it is tried."""
    attempt: int = 1
    """1 the first time, 2 on the first retry, and so on."""
    first_run: bool = False
    """True when no earlier attempt of this expiry can have run, so there is nothing to
    look up in the inbox; the default, False, is the safe one."""

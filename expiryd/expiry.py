"""What a handler receives: one expired key, matched to its route."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class Expiry:
    """An expired key that matched a route.

    `fields` holds every `{placeholder}` of the route's pattern, e.g.
    ``{"order_sn": "SN123", "use_mysql": "1"}`` for ``{order_sn}:{use_mysql}``.
    `value` and `deadline` stay None until expiryd records them at SETEX time.
    """

    key: str
    route: str
    fields: dict[str, str] = field(default_factory=dict)
    value: bytes | None = None
    deadline: datetime | None = None

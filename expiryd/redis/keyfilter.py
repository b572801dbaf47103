"""Which keys are expiryd's business: one filter for the dispatcher (events), the scan
(the ledger's first look at a DB) and the worker (jobs), so that all three agree.

A key is left alone when it is expiryd's own state (under its prefix), and in a cluster
when no route matches it: a cluster has no DB to keep timers apart from caches and
sessions, so the keys the routes match are what expiryd watches. It is refused, with a
reason, when it is longer than `max_key_bytes` or not valid UTF-8: no route can match
it, and its expiry is one `unrouted` line, with no job.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from expiryd.routes import Route, match_route


@dataclass
class KeyFilter:
    own_prefix: bytes
    max_bytes: int
    routed_only: bool = False
    """Leave alone the keys no route matches (in a cluster)."""
    routes: Sequence[Route] = field(default=())
    """The routes in force; a reload replaces them."""

    def owns(self, raw_key: bytes) -> bool:
        """Whether the key is none of expiryd's business: its own state, or (in a
        cluster) a key no route matches."""
        if raw_key.startswith(self.own_prefix):
            return True
        if not self.routed_only:
            return False
        key, _ = self.decode(raw_key)
        return key is None or match_route(self.routes, key) is None

    def refusal(self, raw_key: bytes) -> str | None:
        """Why no route can take this key, or None when one may."""
        return self.decode(raw_key)[1]

    def watches(self, raw_key: bytes) -> bool:
        """Whether the key's deadline is worth keeping in the ledger."""
        return not self.owns(raw_key) and self.refusal(raw_key) is None

    def decode(self, raw_key: bytes) -> tuple[str | None, str | None]:
        """The key as text, or None with the reason it cannot be routed."""
        if len(raw_key) > self.max_bytes:
            return None, f"key is {len(raw_key)} bytes, over max_key_bytes={self.max_bytes}"
        try:
            return raw_key.decode("utf-8"), None
        except UnicodeDecodeError:
            return None, "key is not valid UTF-8"

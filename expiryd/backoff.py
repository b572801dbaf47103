"""How long to wait before trying again: exponential, capped, with jitter."""

from __future__ import annotations

import random
from collections.abc import Callable


def backoff_delay(
    attempt: int, base: float, cap: float, rand: Callable[[], float] = random.random
) -> float:
    """Seconds to wait before attempt `attempt + 1` (attempt counts from 1).

    Half the delay is fixed and half random ("equal jitter"), so clients that failed
    together spread out but none retries at once.
    """
    ceiling = min(cap, base * 2 ** max(attempt - 1, 0))
    return ceiling / 2 + rand() * ceiling / 2

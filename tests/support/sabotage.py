"""Imported as a route's handler module, this breaks the sweeper thread from inside the
daemon: its next step raises SystemExit, which no loop of expiryd's catches. For the test
that a thread which ends takes the daemon down with it (and a non-zero exit)."""

from expiryd.expiry import Expiry
from expiryd.redis.sweeper import Sweeper


def _broken_step(self: Sweeper) -> tuple[bool, int | None]:
    raise SystemExit("sabotaged")


Sweeper._step = _broken_step  # type: ignore[method-assign]


def accept(expiry: Expiry) -> None:
    """The route's handler; importing this module is what matters."""

"""A component: one of the daemon's loops on a thread of its own, with a lifecycle.

- `start()` runs its loop, `run()`, on a new thread named after it;
- `quiet()` asks it to take no more work: it finishes what it has in hand, then ends;
- `stop(deadline)` quiets it and waits for it until `deadline` (`time.monotonic()`);
  True once it has ended.

Its loop goes on until `halt` is set. A loop whose work is to go on until the very end
(the dispatcher applies what the listener heard, the pulse reports how the stop goes)
is halted only by `stop`. However its thread ends, `on_ended` hears of it, with the
exception that ended it, if any: the launcher tells a planned end from a death.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from expiryd.liveness import Beat, no_beat


class Component:
    def __init__(self, *, name: str, beat: Beat = no_beat) -> None:
        self.name = name
        self.beat = beat
        """Said once a turn of the loop (see `liveness`)."""
        self.halt = threading.Event()
        """Set when the loop is to finish what it has in hand and end."""
        self.on_ended: Callable[[Component, BaseException | None], None] = _ignore
        self._thread: threading.Thread | None = None

    def run(self) -> None:
        """The loop, until `halt` is set."""
        raise NotImplementedError

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def quiet(self) -> None:
        self.halt.set()

    def stop(self, deadline: float) -> bool:
        self.halt.set()
        return self.join(deadline)

    def join(self, deadline: float) -> bool:
        """Wait until the loop has ended or `deadline` has passed; whether it has ended."""
        if self._thread is None:
            return True
        self._thread.join(timeout=max(0.0, deadline - time.monotonic()))
        return not self._thread.is_alive()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        try:
            self.run()
        except BaseException as exc:  # any way a loop ends is reported
            self.on_ended(self, exc)
        else:
            self.on_ended(self, None)


def _ignore(component: Component, exc: BaseException | None) -> None:
    """The `on_ended` of a component nobody supervises (tests, a batch's lease renewer)."""

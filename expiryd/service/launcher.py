"""The launcher: starts the daemon's components, watches them, and stops them together.

A component that ends while it is meant to run (it raised, or its loop returned before
it was quieted) is logged as `thread.died`, and the launcher asks the daemon to stop:
it exits non-zero, so that its supervisor starts it again.

Stopping quiets every component at once (no more work is taken), then waits for each,
the latest started first, all by one deadline: the pulse, started first, says the last
word.

The main thread serves the launcher: it waits for a stop, and applies a reload when
asked. Signal handlers only set plain attributes, which it polls: a handler runs on the
main thread between two of its steps, so taking a lock the main thread may hold (an
event's, the log's) could deadlock.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

from expiryd.component import Component
from expiryd.liveness import Loops
from expiryd.logs import describe_error, get_logger


class Launcher:
    def __init__(self, *, loops: Loops) -> None:
        self.loops = loops
        self.stopping = threading.Event()
        """Set when the daemon is to stop: a signal, or a component that died."""
        self.reason: str | None = None
        """What asked for the stop first: a signal's name, or the component that died."""
        self.died: str | None = None
        self._started: list[Component] = []
        self._lock = threading.Lock()
        self._signal: str | None = None
        self._reload = False

    @property
    def components(self) -> list[Component]:
        """Those started and not yet ended after being quieted."""
        return [c for c in self._started if c.running or not c.halt.is_set()]

    def start(self, component: Component) -> None:
        """From any thread: a reload starts workers, the cluster watch a shard's loops."""
        component.on_ended = self._ended
        with self._lock:
            self._started = [*self.components, component]
        component.start()

    def request_stop(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        self.stopping.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop the daemon, SIGHUP asks for a reload."""

        def ask_to_stop(signum: int, _frame: FrameType | None) -> None:
            if self._signal is None:
                self._signal = signal.Signals(signum).name

        def ask_to_reload(_signum: int, _frame: FrameType | None) -> None:
            self._reload = True

        signal.signal(signal.SIGTERM, ask_to_stop)
        signal.signal(signal.SIGINT, ask_to_stop)
        signal.signal(signal.SIGHUP, ask_to_reload)

    def serve(self, reload: Callable[[], None]) -> None:
        """On the main thread, until asked to stop: `reload` each time one is asked."""
        while not self.asked_to_stop():
            if self._reload:
                self._reload = False
                reload()
            else:
                time.sleep(0.1)

    def asked_to_stop(self) -> bool:
        if self._signal is not None:
            self.request_stop(self._signal)
        return self.stopping.is_set()

    def wait(self, timeout: float) -> bool:
        """On the main thread: wait up to `timeout` seconds, or until asked to stop."""
        end = time.monotonic() + timeout
        while not self.asked_to_stop() and time.monotonic() < end:
            time.sleep(min(0.1, max(0.0, end - time.monotonic())))
        return self.stopping.is_set()

    def quiet(self) -> None:
        """Every component takes no more work."""
        for component in self._started:
            component.quiet()

    def stop(self, deadline: float) -> None:
        self.quiet()
        for component in reversed(self._started):
            component.stop(deadline)

    def _ended(self, component: Component, exc: BaseException | None) -> None:
        if exc is None and component.halt.is_set():
            self.loops.forget(component.name)
            return
        self.died = component.name
        self.request_stop(f"thread {component.name} ended")
        error = describe_error(exc) if exc else "returned while the daemon was running"
        get_logger().critical(
            "thread.died", thread=component.name, error=error, exc_info=exc or False
        )

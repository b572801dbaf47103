"""The launcher and its components' lifecycle, with loops that only record what they saw."""

from __future__ import annotations

import threading
import time

from expiryd.component import Component
from expiryd.liveness import Loops
from expiryd.service.launcher import Launcher


class Looping(Component):
    """Turns until halted; records the order in which loops ended."""

    def __init__(self, name: str, ended: list[str], quiet_does_nothing: bool = False) -> None:
        super().__init__(name=name)
        self.ended = ended
        self.quiet_does_nothing = quiet_does_nothing

    def run(self) -> None:
        self.halt.wait()
        time.sleep(0.05)  # an end that takes a moment: the order is the launcher's
        self.ended.append(self.name)

    def quiet(self) -> None:
        if not self.quiet_does_nothing:
            super().quiet()


class Returning(Component):
    def run(self) -> None:
        return


class Raising(Component):
    def run(self) -> None:
        raise RuntimeError("boom")


def launcher() -> Launcher:
    return Launcher(loops=Loops(5.0))


def test_stop_quiets_all_at_once_then_waits_for_each_latest_started_first() -> None:
    ended: list[str] = []
    started = launcher()
    first = Looping("first", ended, quiet_does_nothing=True)
    started.start(first)
    for name in ("second", "third"):
        started.start(Looping(name, ended))
    started.quiet()
    time.sleep(0.2)
    assert sorted(ended) == ["second", "third"]  # quieted at once, not one after another
    assert first.running, "a loop whose quiet does nothing runs on until stopped"
    started.stop(time.monotonic() + 5)
    assert ended[-1] == "first"
    assert started.died is None and not started.stopping.is_set()


def test_a_loop_that_returns_unasked_or_raises_stops_the_daemon_and_is_named() -> None:
    for component in (Returning(name="quitter"), Raising(name="boom")):
        started = launcher()
        started.start(component)
        assert started.stopping.wait(5)
        assert started.died == component.name
        assert started.reason == f"thread {component.name} ended"
        assert component.join(time.monotonic() + 5)


def test_a_retired_component_that_ends_is_no_death_and_leaves_the_list() -> None:
    ended: list[str] = []
    started = launcher()
    retired = Looping("worker-1", ended)
    started.start(retired)
    started.start(Looping("worker-2", ended))
    retired.quiet()
    assert retired.join(time.monotonic() + 5)
    assert [c.name for c in started.components] == ["worker-2"]
    assert started.died is None and not started.stopping.is_set()
    started.stop(time.monotonic() + 5)


def test_the_first_stop_reason_is_kept_and_a_signal_is_acted_on_when_polled() -> None:
    started = launcher()
    started._signal = "SIGTERM"  # what the handler sets, and nothing else
    assert not started.stopping.is_set()
    assert started.asked_to_stop()
    started.request_stop("thread listener ended")
    assert started.reason == "SIGTERM"


def test_wait_ends_early_once_asked_to_stop() -> None:
    started = launcher()
    threading.Timer(0.2, lambda: started.request_stop("test")).start()
    began = time.monotonic()
    assert started.wait(30)
    assert time.monotonic() - began < 10

from __future__ import annotations

import os
import threading

from expiryd import liveness
from expiryd.liveness import Loops
from expiryd.service.notify import Notifier


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_loop_is_overdue_once_it_misses_its_allowance_and_not_before() -> None:
    clock = Clock()
    loops = Loops(allowance=2, clock=clock)
    beat = loops.beat_for("worker-1")
    assert loops.overdue() == {}  # not watched before its first beat
    beat()
    clock.now += 2
    assert loops.overdue() == {}
    clock.now += 0.5
    assert loops.overdue() == {"worker-1": 2.5}  # silent that long
    beat()
    assert loops.overdue() == {}


def test_a_loop_that_says_it_will_wait_is_given_that_long_on_top() -> None:
    clock = Clock()
    loops = Loops(allowance=2, clock=clock)
    beat = loops.beat_for("listener")
    beat(quiet_for=30)
    clock.now += 31
    assert loops.overdue() == {}
    clock.now += 2
    assert set(loops.overdue()) == {"listener"}
    loops.forget("listener")
    assert loops.overdue() == {}


def test_notify_socket_paths_and_abstract_names() -> None:
    pid = os.getpid()
    assert Notifier.from_environ({"NOTIFY_SOCKET": "/run/systemd/notify"}, pid).address == (
        "/run/systemd/notify"
    )
    assert Notifier.from_environ({"NOTIFY_SOCKET": "@sd-notify"}, pid).address == "\0sd-notify"
    absent = Notifier.from_environ({}, pid)
    assert (absent.address, absent.unsupported, absent.send(READY=1)) == (None, None, False)
    vsock = Notifier.from_environ({"NOTIFY_SOCKET": "vsock:2:1234"}, pid)
    assert (vsock.address, vsock.unsupported) == (None, "vsock:2:1234")


def test_the_watchdog_is_ours_only_when_watchdog_pid_is_unset_or_our_pid() -> None:
    pid = 4242
    usec = {"WATCHDOG_USEC": "30000000"}
    assert Notifier.from_environ(usec, pid).watchdog_seconds == 30.0
    assert Notifier.from_environ({**usec, "WATCHDOG_PID": "4242"}, pid).watchdog_seconds == 30.0
    assert Notifier.from_environ({**usec, "WATCHDOG_PID": "1"}, pid).watchdog_seconds is None
    assert Notifier.from_environ({"WATCHDOG_USEC": "soon"}, pid).watchdog_seconds is None
    assert Notifier.from_environ({"WATCHDOG_USEC": "0"}, pid).watchdog_seconds is None


def test_beat_here_beats_the_loop_bound_to_this_thread_and_no_other() -> None:
    heard: list[float] = []
    liveness.beat_here()  # no loop bound here: nothing happens
    liveness.bind(lambda quiet_for=0.0: heard.append(quiet_for), 30)
    liveness.beat_here()
    other = threading.Thread(target=liveness.beat_here)
    other.start()
    other.join()
    assert heard == [30]
    liveness.bind(liveness.no_beat, 0)

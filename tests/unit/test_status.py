"""What `expiryd status` makes of the heartbeats: the verdict, the screen, the JSON; and
what a daemon puts in its heartbeat about its loops."""

from __future__ import annotations

import orjson
import redis

from expiryd.liveness import Loops
from expiryd.redis.keyspace import Keyspace
from expiryd.redis.registry import Heartbeat
from expiryd.service.notify import Notifier
from expiryd.service.report import Reporter
from expiryd.service.status import Report, render
from expiryd.tally import Tally

NOW = 1_800_000_000.0
BATCH_SLOW = {"event": "batch.slow", "level": "warning", "timestamp": "2027-01-15T08:00:00Z"}


def heartbeat(pid: int, alive: bool = True, **fields: object) -> Heartbeat:
    return Heartbeat(
        **{
            "daemon": f"db1:{pid}:cafe",
            "host": "db1",
            "pid": pid,
            "version": "0.1.0",
            "mode": "run",
            "started_at": NOW - 600,
            "beat_at": NOW - 2 if alive else NOW - 60,
            "alive_until": NOW + 13 if alive else NOW - 45,
            "subscribed": True,
            **fields,
        }
    )


def report(*daemons: Heartbeat) -> Report:
    jobs = {"ready": 0, "retrying": 0, "leased": 1, "dead": 0}
    return Report(0, [], jobs, None, now=NOW, daemons=list(daemons))


def test_a_heartbeat_written_before_loops_were_reported_reads_as_none_stalled() -> None:
    older = {
        "daemon": "db1:41:beef", "host": "db1", "pid": 41, "version": "0.0.9", "mode": "run",
        "started_at": NOW - 60, "beat_at": NOW - 1, "alive_until": NOW + 14,
        "subscribed": True, "handled": {}, "last_handled": None, "last_problem": None,
    }  # fmt: skip
    parsed = Heartbeat.parse(orjson.dumps(older))
    assert parsed is not None and parsed.stalled == {}
    assert report(parsed).healthy


def test_a_stalled_loop_of_a_live_daemon_is_not_healthy_and_the_screen_says_where() -> None:
    stuck = report(heartbeat(42, stalled={"worker-1": 34.2}, last_problem=BATCH_SLOW))
    assert stuck.subscribed and not stuck.healthy
    listing = stuck.as_json()
    assert listing["healthy"] is False
    assert listing["stalls"] == [
        {"host": "db1", "pid": 42, "daemon": "db1:42:cafe", "loop": "worker-1", "silent_s": 34.2}
    ]
    assert listing["daemons"][0]["stalled"] == {"worker-1": 34.2}

    screen = render(stuck)
    assert screen[0] == "expiryd: NOT HEALTHY: worker-1 stalled in pid 42 on db1, silent 34s"
    assert "    STALLED: worker-1 silent 34s" in screen
    # A warning logged after the stall is the last problem, and hides nothing.
    assert "    last problem: batch.slow at 2027-01-15 08:00:00 UTC" in screen


def test_every_reason_is_in_the_verdict() -> None:
    quiet = heartbeat(42, subscribed=False, stalled={"sweeper": 40.0, "listener": 95.0})
    assert render(report(quiet))[0] == (
        "expiryd: NOT HEALTHY: no live daemon is subscribed; "
        "listener stalled in pid 42 on db1, silent 2m; sweeper stalled in pid 42 on db1, "
        "silent 40s"
    )


def test_a_daemon_that_only_works_counts_when_its_loop_stalls() -> None:
    worker = heartbeat(43, mode="work", subscribed=False, stalled={"worker-2": 31.0})
    stuck = report(heartbeat(42), worker)
    assert not stuck.healthy
    assert [(s.pid, s.loop) for s in stuck.stalls] == [(43, "worker-2")]


def test_a_gone_daemon_that_had_stalled_is_history_not_a_verdict() -> None:
    restarted = report(heartbeat(41, alive=False, stalled={"worker-1": 30.5}), heartbeat(42))
    assert restarted.healthy and restarted.stalls == []
    screen = render(restarted)
    assert screen[0] == "expiryd: healthy"
    assert "    stalled when last seen: worker-1 silent 30s" in screen
    assert not any("STALLED" in line for line in screen)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_heartbeat_names_the_loops_overdue_when_it_is_written() -> None:
    clock = Clock()
    loops = Loops(allowance=2, clock=clock)
    worker, listener = loops.beat_for("worker-1"), loops.beat_for("listener")
    worker()
    listener()
    reporter = Reporter(
        redis.Redis(),  # not called: a heartbeat is built without Redis
        Keyspace("expiryd:", 15),
        Notifier(None, None),
        Tally(),
        loops,
        lambda: False,
        None,
    )
    assert reporter.heartbeat(stopping=False).stalled == {}
    clock.now += 4.04
    listener()
    assert reporter.heartbeat(stopping=False).stalled == {"worker-1": 4.0}

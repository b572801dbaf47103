"""`expiryd status`: one screen on the daemons, the ledger and the queue, read from Redis.

Healthy (exit 0) when at least one `run` daemon is alive and subscribed, and no alive
daemon has a loop that stopped turning: then every expiry of the watched DB is heard, and
no expiry waits on a stuck thread. Otherwise exit 1, whatever else the screen says.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis

from expiryd.logs import display_key, escape_text
from expiryd.redis.keyspace import Keyspace
from expiryd.redis.registry import Heartbeat, Registry

NEXT_DEADLINES = 5


@dataclass(frozen=True)
class Deadline:
    key: str
    due_in_s: float


@dataclass(frozen=True)
class Stall:
    """A loop of an alive daemon that stopped turning, as its last heartbeat said."""

    host: str
    pid: int
    daemon: str
    loop: str
    silent_s: float


@dataclass(frozen=True)
class Figures:
    """The ledger and the queue as Redis holds them now."""

    ledger_keys: int
    next_deadlines: list[Deadline]
    jobs: dict[str, int]
    """ready (due now), retrying (due later), leased, dead."""
    oldest_ready_s: float | None


@dataclass(frozen=True)
class Report(Figures):
    now: float = 0.0
    daemons: list[Heartbeat] = field(default_factory=list)

    @property
    def alive(self) -> list[Heartbeat]:
        return [d for d in self.daemons if d.alive(self.now)]

    @property
    def subscribed(self) -> bool:
        """Whether some alive `run` daemon hears the watched DB's expiries."""
        return any(d.mode == "run" and d.subscribed for d in self.alive)

    @property
    def stalls(self) -> list[Stall]:
        """Each loop an alive daemon said has stopped turning."""
        return [
            Stall(d.host, d.pid, d.daemon, loop, silent)
            for d in self.alive
            for loop, silent in sorted(d.stalled.items())
        ]

    @property
    def healthy(self) -> bool:
        return self.subscribed and not self.stalls

    def as_json(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "stalls": [asdict(s) for s in self.stalls],
            "daemons": [{**asdict(d), "alive": d.alive(self.now)} for d in self.daemons],
            "ledger_keys": self.ledger_keys,
            "next_deadlines": [asdict(d) for d in self.next_deadlines],
            "jobs": self.jobs,
            "oldest_ready_s": self.oldest_ready_s,
        }


def gather(client: redis.Redis, keyspace: Keyspace, shards: Sequence[Keyspace]) -> Report:
    """The heartbeats under `keyspace`, and the figures of every shard."""
    figures = combine([read_figures(client, shard) for shard in shards])
    daemons = Registry(client, keyspace).heartbeats()
    return Report(**vars(figures), now=time.time(), daemons=daemons)


def combine(parts: Sequence[Figures]) -> Figures:
    """The figures of several shards (a cluster's) as one."""
    if len(parts) == 1:
        return parts[0]
    upcoming = sorted((d for f in parts for d in f.next_deadlines), key=lambda d: d.due_in_s)
    oldest = [f.oldest_ready_s for f in parts if f.oldest_ready_s is not None]
    return Figures(
        ledger_keys=sum(f.ledger_keys for f in parts),
        next_deadlines=upcoming[:NEXT_DEADLINES],
        jobs={state: sum(f.jobs[state] for f in parts) for state in parts[0].jobs},
        oldest_ready_s=max(oldest) if oldest else None,
    )


def read_figures(client: redis.Redis, keyspace: Keyspace) -> Figures:
    seconds, micros = client.time()
    now_ms = seconds * 1000 + micros // 1000  # the Redis clock, which scores the queue
    with client.pipeline(transaction=False) as pipe:
        pipe.zcard(keyspace.deadlines)
        pipe.zrange(keyspace.deadlines, 0, NEXT_DEADLINES - 1, withscores=True)
        pipe.zcount(keyspace.ready, "-inf", now_ms)
        pipe.zcount(keyspace.ready, f"({now_ms}", "+inf")
        pipe.zcard(keyspace.leases)
        pipe.zcard(keyspace.dead)
        pipe.zrange(keyspace.ready, 0, 0, withscores=True)
        ledger_keys, upcoming, ready, retrying, leased, dead, oldest = pipe.execute()
    oldest_ready = None
    if oldest and oldest[0][1] <= now_ms:
        oldest_ready = round((now_ms - oldest[0][1]) / 1000, 3)
    return Figures(
        ledger_keys=ledger_keys,
        next_deadlines=[
            Deadline(display_key(key), round((score - now_ms) / 1000, 3)) for key, score in upcoming
        ],
        jobs={"ready": ready, "retrying": retrying, "leased": leased, "dead": dead},
        oldest_ready_s=oldest_ready,
    )


def render(report: Report) -> list[str]:
    lines = [f"expiryd: {_verdict(report)}", "", "daemons:"]
    for daemon in report.daemons:
        lines += [_daemon_line(daemon, report.now), *_stalled_lines(daemon, report.now)]
    if not report.daemons:
        lines.append("  none has run")
    for daemon in report.alive:
        lines += _handled_lines(daemon)
    jobs = report.jobs
    oldest = "" if report.oldest_ready_s is None else f" (oldest {report.oldest_ready_s:.1f}s)"
    lines += [
        "",
        f"ledger: {report.ledger_keys:,} watched keys with a deadline",
        *(f"  {d.key}  in {_span(d.due_in_s)}" for d in report.next_deadlines),
        "",
        f"jobs: {jobs['ready']:,} ready{oldest}, {jobs['retrying']:,} retrying, "
        f"{jobs['leased']:,} leased, {jobs['dead']:,} dead",
    ]
    return lines


def _verdict(report: Report) -> str:
    if report.healthy:
        return "healthy"
    reasons = [] if report.subscribed else ["no live daemon is subscribed"]
    reasons += [
        f"{escape_text(s.loop)} stalled in pid {s.pid} on {escape_text(s.host)}, "
        f"silent {_span(s.silent_s)}"
        for s in report.stalls
    ]
    return f"NOT HEALTHY: {'; '.join(reasons)}"


def _daemon_line(daemon: Heartbeat, now: float) -> str:
    if daemon.alive(now):
        state = "subscribed" if daemon.subscribed else "alive, NOT subscribed"
        if daemon.mode == "work":
            state = "alive (works only)"
        seen = f"last heartbeat {_span(now - daemon.beat_at)} ago"
    else:
        state, seen = "gone", f"last seen {_span(now - daemon.beat_at)} ago"
    up = _span(daemon.beat_at - daemon.started_at)
    return (
        f"  {escape_text(daemon.host)} pid {daemon.pid}  v{escape_text(daemon.version)}  "
        f"{daemon.mode}  {state}, up {up}, {seen}"
    )


def _stalled_lines(daemon: Heartbeat, now: float) -> list[str]:
    """The loops its last heartbeat found silent; a gone daemon's, as what it last said
    (one the watchdog restarted, say)."""
    if not daemon.stalled:
        return []
    label = "STALLED" if daemon.alive(now) else "stalled when last seen"
    loops = ", ".join(
        f"{escape_text(loop)} silent {_span(silent)}"
        for loop, silent in sorted(daemon.stalled.items())
    )
    return [f"    {label}: {loops}"]


def _handled_lines(daemon: Heartbeat) -> list[str]:
    lines = [f"  handled by pid {daemon.pid} since it started:"]
    for route, outcomes in sorted(daemon.handled.items()):
        counts = ", ".join(f"{n:,} {outcome}" for outcome, n in sorted(outcomes.items()))
        lines.append(f"    {escape_text(route) or '(no route)'}: {counts}")
    if not daemon.handled:
        lines.append("    nothing yet")
    problem = daemon.last_problem
    if problem:
        when = _iso(problem.get("timestamp"))
        error = f": {problem['error']}" if "error" in problem else ""
        lines.append(f"    last problem: {problem['event']} at {when}{escape_text(error)}")
    return lines


def _span(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _iso(stamp: object) -> str:
    if not isinstance(stamp, str):
        return "?"
    try:
        return datetime.fromisoformat(stamp).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return escape_text(stamp)

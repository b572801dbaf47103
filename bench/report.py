"""The bench's results: a markdown table (printed and saved) and a PNG plot."""

from __future__ import annotations

import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path

from bench.footprint import Footprint
from bench.measure import Result, percentile

PROCESSES = ("expiryd", "naive", "redis-server", "mariadbd")


def table(results: Sequence[Result], footprint: Footprint | None) -> str:
    ceiling = next((r.per_second for r in results if r.name == "ceiling"), None)
    naive = next(
        (r.per_second for r in results if r.name == "naive" and r.scenario == "burst"), None
    )
    rows = [
        "| run | orders | orders/s | ÷ ceiling | ÷ naive | lateness p50 | p99 | max "
        "| lost | changed twice | peak RSS | CPU s per 1,000 orders |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in results:
        late = r.lateness()
        rows.append(
            f"| {r.name} {r.scenario} | {r.orders:,} | {r.per_second:,.0f} "
            f"| {_ratio(r, ceiling)} | {_ratio(r, naive)} "
            f"| {_ms(percentile(late, 0.5))} | {_ms(percentile(late, 0.99))} "
            f"| {_ms(max(late, default=float('nan')))} | {r.lost:,} | {r.twice:,} "
            f"| {_mb(r.peak_rss_mb)} | {_cpu(r)} |"
        )
    notes = [f"- {r.name} {r.scenario}: {note}" for r in results for note in r.notes]
    if footprint:
        notes.append(
            f"- Redis memory: {footprint.per_ledger_entry:.0f} bytes per ledger entry, "
            f"{footprint.per_queued_job:.0f} bytes per queued job "
            f"({footprint.keys:,} of each, measured on an empty DB)"
        )
    notes += [f"- {line}" for r in results if r.name == "expiryd" for line in _redis_work(r)]
    return "\n".join([*rows, "", *notes]) + "\n"


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.machine(),
    )
    cores = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    versions = ", ".join(
        _version(command)
        for command in (
            ["redis-server", "--version"],
            ["mariadbd", "--version"],
        )
    )
    return f"{cores} cores ({cpu}), Python {platform.python_version()}, {versions}"


def _version(command: list[str]) -> str:
    try:
        out = subprocess.run(command, capture_output=True, text=True).stdout.split()
    except OSError:
        return f"{command[0]} ?"
    found = next((w for w in out if w[:1].isdigit() or w.startswith("v=")), "?")
    return f"{command[0]} {found.removeprefix('v=')}"


def _redis_work(r: Result) -> list[str]:
    done = max(r.changed_once, 1)
    stats = sorted(r.commandstats.items(), key=lambda kv: -kv[1]["calls"])
    calls = sum(s["calls"] for _, s in stats) * 1000 / done
    top = ", ".join(
        f"{n.removeprefix('cmdstat_')} {s['calls'] * 1000 / done:,.0f}" for n, s in stats[:8]
    )
    return [f"{r.scenario}: Redis commands per 1,000 orders: {calls:,.0f} ({top})"]


def _ratio(r: Result, reference: float | None) -> str:
    """Rates compare in a burst; a spread's rate is the rate its orders came due."""
    if r.scenario != "burst" or not reference:
        return "–"
    return f"{r.per_second / reference:.2f}x"


def _ms(seconds: float) -> str:
    if seconds != seconds:
        return "–"
    return f"{seconds * 1000:,.0f} ms" if seconds < 10 else f"{seconds:,.1f} s"


def _mb(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f} MB"


def _cpu(r: Result) -> str:
    per = r.cpu_per_thousand()
    return " · ".join(f"{name} {seconds:.3f}" for name, seconds in per.items())


def plot(results: Sequence[Result], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    for r in results:
        if r.scenario != "burst" or not r.changes:
            continue
        start = r.first_deadline
        left.plot(
            [at - start for _, at in r.changes],
            range(1, len(r.changes) + 1),
            label=f"{r.name} ({r.per_second:,.0f}/s)",
        )
    left.set(
        title="Burst: orders changed since the deadline",
        xlabel="seconds after the deadline",
        ylabel="orders changed",
    )
    left.legend()
    for r in results:
        if r.scenario != "spread" or not r.changes:
            continue
        start = r.first_deadline
        late = r.lateness()
        at = [a - start for _, a in r.changes][: len(late)]
        right.scatter(at, [max(x * 1000, 0.1) for x in late], s=1, label=r.name)
    right.set(
        title="Spread: lateness of each order when it changed",
        yscale="log",
        xlabel="seconds after the first deadline",
        ylabel="deadline to commit (ms)",
    )
    right.legend(markerscale=8)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)

"""The three systems the bench runs on the same servers: expiryd (the real daemon, as a
user runs it), the naive subscriber, and the database's ceiling."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pymysql
import redis

from bench import ceiling
from bench.measure import CpuMeter, Result, peak_rss_mb, wait_for_changes
from bench.orders import Shop, order_numbers, other_keys, schedule
from expiryd.redis.connections import RedisTarget
from expiryd.redis.keyspace import Keyspace
from expiryd.redis.shards import shard_keyspaces
from tests.support.servers import MariaDB, RedisServer
from tests.support.topology import ClusterSetup

OTHER_KEYS = 100_000
OTHER_TTL_MS = 3_600_000
SCHEDULE_RATE = 25_000
"""Keys per second the bench allows itself (and the daemon's ledger) to schedule them."""


@dataclass
class Scenario:
    name: str
    orders: int
    spread_s: float = 0.0
    others: int = 0
    give_up_after_s: float = 900.0
    """Stop waiting this long after the last deadline, and count what is left as lost."""

    def deadlines_ms(self, first_ms: int) -> list[int]:
        step = self.spread_s * 1000 / self.orders
        return [first_ms + int(n * step) for n in range(self.orders)]


@dataclass
class Servers:
    root: Path
    redis: RedisServer
    mariadb: MariaDB
    databases: int = 0
    settings: dict[str, dict[str, str]] = field(default_factory=dict)
    workers: int = 0
    profile: Path | None = None
    cluster: ClusterSetup | None = None
    """With --cluster: expiryd's runs use it instead of `redis`."""

    def shop(self, orders: int) -> tuple[Shop, int, str]:
        """A fresh database and Redis DB of their own; (shop, redis db, database name)."""
        self.databases += 1
        name = f"bench{self.databases}"
        url = self.mariadb.create_database(name)
        return Shop.create(url, self.mariadb.admin(name), orders), self.databases, name

    def pids(self) -> dict[str, int]:
        assert self.redis.process and self.mariadb.process
        return {"redis-server": self.redis.process.pid, "mariadbd": self.mariadb.process.pid}

    def cluster_pids(self) -> dict[str, int]:
        """Each cluster node as `redis-server <port>`: `_measure` adds them up."""
        assert self.cluster is not None and self.mariadb.process
        nodes = {f"redis-server {n.port}": n.process.pid for n in self.cluster.nodes if n.process}
        return {**nodes, "mariadbd": self.mariadb.process.pid}


def run_expiryd(servers: Servers, scenario: Scenario, on_cluster: bool = False) -> Result:
    shop, db, _ = servers.shop(scenario.orders)
    cluster = servers.cluster if on_cluster else None
    client: redis.Redis = cluster.client() if cluster else servers.redis.client(db)  # type: ignore[assignment]
    if scenario.others:
        other_keys(client, scenario.others, OTHER_TTL_MS)
    redis_url = cluster.url() if cluster else servers.redis.url(db)
    config = _write_config(servers, redis_url, shop.url, scenario.name)
    log = servers.root / f"expiryd-{scenario.name}.log"
    daemons = [_expiryd("run", config, log)]
    _wait_for_line(log, "listener.subscribed", daemons[0])
    daemons += [
        _expiryd("work", config, servers.root / f"work{n}-{scenario.name}.log")
        for n in range(servers.workers)
    ]
    names = ["expiryd"] + [f"expiryd work {n + 1}" for n in range(servers.workers)]
    pids = dict(zip(names, (d.pid for d in daemons), strict=True))
    try:
        keyspaces = shard_keyspaces(RedisTarget.from_url(redis_url), client, "expiryd:")
        result = _measure(servers, scenario, shop, client, pids, keyspaces, on_cluster)
        result.peak_rss_mb = peak_rss_mb(daemons[0].pid)
        if cluster:
            result.name = f"expiryd on {len(cluster.primaries())} cluster primaries"
    finally:
        logs = _logs(servers, scenario)
        handled = sum(_stop(d, path) for d, path in zip(daemons, logs, strict=True))
    if handled != result.changed_once:
        result.notes.append(f"{handled} expiry.handled lines for {result.changed_once} orders")
    return result


def run_naive(servers: Servers, scenario: Scenario) -> Result:
    shop, db, name = servers.shop(scenario.orders)
    client = servers.redis.client(db)
    mariadb = servers.mariadb
    subscriber = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.naive",
            servers.redis.url(db),
            str(db),
            "127.0.0.1",
            str(mariadb.port),
            "expiryd",
            name,
        ],
        env={**os.environ, "NAIVE_DB_PASSWORD": mariadb.password},  # not on its command line
        stdout=subprocess.PIPE,
        text=True,
    )
    assert subscriber.stdout is not None
    subscriber.stdout.readline()
    try:
        pids = {"naive": subscriber.pid}
        result = _measure(servers, scenario, shop, client, pids, None, process=subscriber)
        if subscriber.poll() is not None:
            # As the seeds' script does when Redis drops a subscriber that fell behind.
            exited = f"the naive subscriber exited (code {subscriber.returncode}) mid-run"
            result.notes.append(exited)
    finally:
        subscriber.terminate()
        subscriber.wait(10)
    return result


def run_ceiling(servers: Servers, orders: int) -> Result:
    shop, _, name = servers.shop(orders)
    mariadb = servers.mariadb
    connection = pymysql.connect(
        host="127.0.0.1",
        port=mariadb.port,
        user="expiryd",
        password=mariadb.password,
        database=name,
        ssl_disabled=True,
    )
    meter = CpuMeter(servers.pids())
    bench_cpu = time.process_time()
    meter.start()
    started = ceiling.cancel_all(connection, order_numbers(orders))
    cpu = meter.stop()
    cpu["bench (client)"] = time.process_time() - bench_cpu
    connection.close()
    numbers = order_numbers(orders)
    return Result("ceiling", "burst", orders, dict.fromkeys(numbers, started), shop.changes(), cpu)


def _measure(
    servers: Servers,
    scenario: Scenario,
    shop: Shop,
    client: redis.Redis,
    pids: dict[str, int],
    keyspaces: list[Keyspace] | None,
    on_cluster: bool = False,
    process: subprocess.Popen[str] | None = None,
) -> Result:
    """Schedule the orders, then measure from the first deadline to the last change (or
    until `process`, what makes the changes, has exited)."""
    numbers = order_numbers(scenario.orders)
    lead_s = 3 + scenario.orders / SCHEDULE_RATE
    first_ms = int((time.time() + lead_s) * 1000)
    deadlines_ms = scenario.deadlines_ms(first_ms)
    schedule(client, numbers, deadlines_ms)
    notes = []
    with_ttl = len(numbers) + scenario.others
    if (
        keyspaces is not None
        and (recorded := _recorded_by(client, keyspaces, with_ttl, first_ms)) < with_ttl
    ):
        notes.append(f"{recorded:,} of {with_ttl:,} deadlines recorded by the first deadline")
    time.sleep(max(0.0, first_ms / 1000 - time.time()))
    if not on_cluster:
        client.config_resetstat()
    meter = CpuMeter({**pids, **(servers.cluster_pids() if on_cluster else servers.pids())})
    meter.start()
    profiler = _profile(servers, pids, scenario)
    last_s = deadlines_ms[-1] / 1000

    peak_mb = 0.0

    def alive() -> bool:
        nonlocal peak_mb
        if process is None:
            return True
        meter.sample()  # before it is reaped, which takes its figures with it
        peak_mb = max(peak_mb, peak_rss_mb(process.pid))
        return process.poll() is None

    wait_for_changes(shop.changed, scenario.orders, last_s + scenario.give_up_after_s, alive=alive)
    spent = meter.stop()
    cpu = _nodes_added_up(spent)
    if profiler:
        profiler.send_signal(signal.SIGINT)
        profiler.wait(60)
    deadlines = {n: d / 1000 for n, d in zip(numbers, deadlines_ms, strict=True)}
    name = "naive" if keyspaces is None else "expiryd"
    result = Result(name, scenario.name, scenario.orders, deadlines, shop.changes(), cpu)
    result.notes += notes
    if on_cluster:
        result.notes.append(_busiest_node(spent, scenario.orders))
    if process is not None:
        result.peak_rss_mb = max(peak_mb, peak_rss_mb(process.pid))
    if not on_cluster:
        result.commandstats = dict(client.info("commandstats"))
    return result


def _busiest_node(cpu: dict[str, float], orders: int) -> str:
    """The redis-server that spent the most CPU: what bounds a cluster's rate."""
    nodes = {name: s for name, s in cpu.items() if name.startswith("redis-server ")}
    name = max(nodes, key=nodes.__getitem__)
    return (
        f"busiest node {name}: {nodes[name] / orders * 1000:.3f} s CPU per 1,000 orders "
        f"(all {len(nodes)} nodes {sum(nodes.values()) / orders * 1000:.3f} s)"
    )


def _nodes_added_up(cpu: dict[str, float]) -> dict[str, float]:
    nodes = {name: s for name, s in cpu.items() if name.startswith("redis-server ")}
    if not nodes:
        return cpu
    others = {name: s for name, s in cpu.items() if name not in nodes}
    return {**others, "redis-server": sum(nodes.values())}


def _recorded_by(
    client: redis.Redis, keyspaces: list[Keyspace], expected: int, when_ms: int
) -> int:
    """How many deadlines the ledgers hold once they hold `expected`, or just before
    `when_ms`, whichever comes first."""
    while True:
        recorded = sum(int(client.zcard(keyspace.deadlines)) for keyspace in keyspaces)
        if recorded >= expected or time.time() * 1000 >= when_ms - 500:
            return recorded
        time.sleep(0.2)


def _profile(
    servers: Servers, pids: dict[str, int], scenario: Scenario
) -> subprocess.Popen[bytes] | None:
    if servers.profile is None or "expiryd" not in pids:
        return None
    out = servers.profile / f"profile-{scenario.name}.txt"
    return subprocess.Popen(
        [
            str(Path(sys.executable).parent / "py-spy"),
            "record",
            "--pid",
            str(pids["expiryd"]),
            "--format",
            "raw",
            "--threads",
            "--gil",
            "--rate",
            "50",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _write_config(servers: Servers, redis_url: str, url: str, name: str) -> Path:
    sections = {"redis": {"url": f'"{redis_url}"'}, "database": {"url": f'"{url}"'}}
    for section, values in servers.settings.items():
        sections.setdefault(section, {}).update(values)
    text = "".join(
        f"[{section}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items())
        for section, values in sections.items()
    )
    path = servers.root / f"expiryd-{name}.toml"
    path.write_text(text)
    return path


def _expiryd(command: str, config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "expiryd",
                command,
                "--config",
                str(config),
                "--log-format",
                "json",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _logs(servers: Servers, scenario: Scenario) -> list[Path]:
    return [servers.root / f"expiryd-{scenario.name}.log"] + [
        servers.root / f"work{n}-{scenario.name}.log" for n in range(servers.workers)
    ]


def _wait_for_line(log: Path, event: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if f'"{event}"' in log.read_text(errors="replace"):
            return
        if process.poll() is not None:
            raise SystemExit(f"expiryd exited: {log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.1)
    raise SystemExit(f"expiryd never logged {event}")


def _stop(process: subprocess.Popen[bytes], log: Path) -> int:
    """Stop a daemon; the expiry.handled lines it wrote."""
    process.terminate()
    process.wait(60)
    with log.open(errors="replace") as lines:
        return sum(1 for line in lines if '"expiry.handled"' in line)

"""`scripts/bench`: expiryd, a naive subscriber and the database's ceiling, side by side.

burst   all orders' keys due in the same millisecond
spread  the orders due evenly over min(60, N / 1,000) s, among 100,000 other keys with a
        1 h TTL
Every order's lateness is read from the database: an audit trigger stamps each status
change with SYSDATE(6). The naive subscriber runs the burst on a sample (its rate does not
depend on how many wait) and, without --quick, the spread in full.
--cluster runs the burst on the single Redis and on a local cluster of three primaries
(a replica each), in the same run, and the ceiling.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench import footprint, report
from bench.systems import OTHER_KEYS, Scenario, Servers, run_ceiling, run_expiryd, run_naive
from tests.support.servers import MariaDB, RedisServer
from tests.support.topology import ClusterSetup

QUICK_ORDERS = 50_000
SPREAD_S = 60
SPREAD_RATE = 1000
NAIVE_SAMPLE = 20_000
NAIVE_GIVE_UP_S = 60


def main() -> None:
    args = _parser().parse_args()
    orders = QUICK_ORDERS if args.quick else args.orders
    out = Path(args.out) / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="expiryd-bench-") as work:
        root = Path(work)
        servers = Servers(root, RedisServer(root / "redis"), MariaDB(root / "mariadb", "1G"))
        servers.settings = _settings(args.set)
        servers.workers = args.workers
        servers.profile = out if args.profile else None
        servers.redis.start()
        servers.mariadb.start()
        if args.cluster:
            servers.cluster = ClusterSetup(root / "cluster")
            servers.cluster.start()

        def save(results: list, fp: footprint.Footprint | None) -> str:
            """Written after every scenario, so that a run cut short keeps what it has."""
            title = f"expiryd bench, {orders:,} orders: {report.machine()}"
            text = f"# {title}\n\n{report.table(results, fp)}"
            (out / "results.md").write_text(text)
            return text

        try:
            results, fp = _run_all(servers, orders, args, save)
        finally:
            servers.redis.stop()
            servers.mariadb.stop()
            if servers.cluster:
                servers.cluster.stop()
    text = save(results, fp)
    report.plot(results, out / "bench.png", f"expiryd bench, {orders:,} orders")
    print(text)
    print(f"written to {out}/")


def _run_all(
    servers: Servers,
    orders: int,
    args: argparse.Namespace,
    save: Callable[[list, footprint.Footprint | None], str],
) -> tuple[list, footprint.Footprint | None]:
    everything = {"burst", "spread", "naive", "ceiling", "footprint"}
    if args.cluster:
        everything = {"burst", "cluster", "ceiling"}
    chosen = set(args.only.split(",")) if args.only else everything
    spread_s = min(SPREAD_S, orders / SPREAD_RATE)
    results = []
    if "burst" in chosen:
        _say(f"expiryd: burst of {orders:,}")
        results.append(run_expiryd(servers, Scenario("burst", orders)))
        save(results, None)
    if "cluster" in chosen:
        _say(f"expiryd: burst of {orders:,} on a cluster of 3 primaries")
        results.append(run_expiryd(servers, Scenario("burst", orders), on_cluster=True))
        save(results, None)
    if "spread" in chosen:
        _say(f"expiryd: {orders:,} spread over {spread_s:.0f} s among {OTHER_KEYS:,} other keys")
        results.append(run_expiryd(servers, Scenario("spread", orders, spread_s, OTHER_KEYS)))
        save(results, None)
    if "naive" in chosen:
        sample = min(orders, args.naive_sample)
        _say(f"naive: burst of {sample:,}")
        results.append(run_naive(servers, Scenario("burst", sample, give_up_after_s=300)))
        save(results, None)
        if not args.quick:
            _say(f"naive: {orders:,} spread over {spread_s:.0f} s")
            scenario = Scenario("spread", orders, spread_s, OTHER_KEYS, NAIVE_GIVE_UP_S)
            results.append(run_naive(servers, scenario))
            save(results, None)
    if "ceiling" in chosen:
        _say(f"ceiling: {orders:,} in batched UPDATEs")
        results.append(run_ceiling(servers, orders))
        save(results, None)
    fp = None
    if "footprint" in chosen:
        _say("Redis memory per ledger entry and queued job")
        fp = footprint.measure(servers.redis.client(14), 14)
    return results, fp


def _settings(pairs: list[str]) -> dict[str, dict[str, str]]:
    settings: dict[str, dict[str, str]] = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        section, _, key = name.partition(".")
        if not (section and key and value):
            raise SystemExit(f"--set {pair!r}: expected section.key=value")
        settings.setdefault(section, {})[key] = value
    return settings


def _say(what: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {what}", flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--orders", type=int, default=1_000_000, help="orders per run (default 1,000,000)"
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_ORDERS:,} orders, no naive spread"
    )
    parser.add_argument(
        "--naive-sample", type=int, default=NAIVE_SAMPLE, help="orders in the naive burst"
    )
    parser.add_argument(
        "--only", help="comma-separated: burst,spread,naive,ceiling,footprint,cluster"
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="the burst on a single Redis and on a local cluster of 3 primaries, and the ceiling",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="a setting for expiryd's config, TOML value (e.g. worker.batch_size=500)",
    )
    parser.add_argument("--workers", type=int, default=0, help="extra `expiryd work` processes")
    parser.add_argument("--profile", action="store_true", help="py-spy the daemon (raw stacks)")
    parser.add_argument(
        "--out", default="bench-results", help="results folder (default bench-results)"
    )
    return parser


if __name__ == "__main__":
    main()

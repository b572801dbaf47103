"""The Prometheus endpoint, scraped during a burst and checked against the log."""

from __future__ import annotations

import signal
import socket
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import StartDaemon, assert_queue_settled, write_config
from tests.support.daemon import psetex_many, run_cli, setex
from tests.support.servers import RedisServer, free_port

ACCEPT = '[[routes]]\npattern = "t:{n}"\nhandler = "tests.support.hooks:accept"\n'
BOOM = (
    '[[routes]]\npattern = "boom:{n}"\nhandler = "tests.support.hooks:explode"\n'
    "retry = { attempts = 1 }\n"
)
BURST = 3000

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, frozenset(labels.items())]


def test_metrics_count_what_the_log_says_during_and_after_a_burst(
    start_daemon: StartDaemon, redis_db: RedisServer, sqlite_url: str
) -> None:
    port = free_port()
    daemon = start_daemon(sqlite_url, ACCEPT + f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
    daemon.wait_for_event("expiryd.ready")
    before = scrape(port)
    # Known in advance, so at 0 before anything happened (alerts need no "absent()").
    assert value(before, "expiryd_expiries_total", route="t:{n}", outcome="applied") == 0
    assert value(before, "expiryd_expiries_total", route="", outcome="unrouted") == 0
    assert value(before, "expiryd_jobs", state="dead") == 0
    assert value(before, "expiryd_oldest_ready_seconds") == 0
    assert value(before, "expiryd_lateness_seconds_count", route="t:{n}") == 0
    assert value(before, "expiryd_up") == 1 and value(before, "expiryd_subscribed") == 1

    psetex_many(redis_db.client(), [f"t:{n}" for n in range(BURST)], 300)
    psetex_many(redis_db.client(), ["other:1"], 300)
    seen = []
    deadline = time.monotonic() + 60
    while len(daemon.handled()) < BURST + 1 and time.monotonic() < deadline:
        seen.append(value(scrape(port), "expiryd_expiries_total", route="t:{n}", outcome="applied"))
        time.sleep(0.1)
    assert seen == sorted(seen), "a counter went down"
    daemon.wait_for_event("expiry.handled", BURST + 1)

    after = scrape(port)
    applied = [line for line in daemon.handled() if line["outcome"] == "applied"]
    unrouted = [line for line in daemon.handled() if line["outcome"] == "unrouted"]
    assert value(after, "expiryd_expiries_total", route="t:{n}", outcome="applied") == len(applied)
    assert len(applied) == BURST
    assert value(after, "expiryd_expiries_total", route="", outcome="unrouted") == len(unrouted)
    assert value(after, "expiryd_lateness_seconds_count", route="t:{n}") == BURST
    assert value(after, "expiryd_lateness_seconds_bucket", route="t:{n}", le="+Inf") == BURST
    assert value(after, "expiryd_last_handled_timestamp_seconds") > 0
    assert value(after, "expiryd_redis_reconnects_total") == 0
    assert_queue_settled(redis_db, [daemon])


def test_a_metrics_port_in_use_stops_the_start_with_one_line(
    tmp_path: Path, redis_db: RedisServer, sqlite_url: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        body = ACCEPT + f'[metrics]\nlisten = "127.0.0.1:{port}"\n'
        config = write_config(tmp_path / "expiryd.toml", redis_db.url(), sqlite_url, body)
        result = run_cli("run", "--config", str(config), "--log-format", "json")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"expiryd: error: [metrics] listen 127.0.0.1:{port}: Address already in use"
    ]


def test_a_reload_turns_the_endpoint_on_moves_it_and_leaves_it_when_it_cannot_move(
    start_daemon: StartDaemon, redis_db: RedisServer, sqlite_url: str
) -> None:
    first, second = free_port(), free_port()
    daemon = start_daemon(sqlite_url, ACCEPT)
    daemon.wait_for_event("expiryd.ready")
    assert daemon.config is not None
    good = daemon.config.read_text()

    def reload_to(listen: str) -> None:
        daemon.config.write_text(good + f'\n[metrics]\nlisten = "{listen}"\n')  # type: ignore[union-attr]
        daemon.process.send_signal(signal.SIGHUP)

    reload_to(f"127.0.0.1:{first}")
    daemon.wait_for_event("config.reloaded")
    samples = scrape(first)  # live from the start, as if it had been on from the start
    assert value(samples, "expiryd_up") == 1 and value(samples, "expiryd_subscribed") == 1

    reload_to(f"127.0.0.1:{second}")
    daemon.wait_for_event("config.reloaded", 2)
    assert value(scrape(second), "expiryd_up") == 1
    with pytest.raises(OSError):
        scrape(first)

    # The same port on another loopback address, taken: only found out by trying it,
    # after its own endpoint was let go; the reload is refused and the endpoint stays.
    with socket.socket() as taken:
        taken.bind(("127.0.0.2", second))
        taken.listen()
        reload_to(f"127.0.0.2:{second}")
        (failed,) = daemon.wait_for_event("config.reload_failed")
    assert "Address already in use" in failed["error"]
    assert value(scrape(second), "expiryd_up") == 1
    setex(redis_db.client(), "t:1", 1)
    daemon.wait_for_event("expiry.handled")
    assert_queue_settled(redis_db, [daemon])


def test_a_metrics_listen_that_is_not_host_and_port_is_a_config_error(
    tmp_path: Path, redis_db: RedisServer, sqlite_url: str
) -> None:
    body = ACCEPT + '[metrics]\nlisten = "9308"\n'
    config = write_config(tmp_path / "expiryd.toml", redis_db.url(), sqlite_url, body)
    result = run_cli("check", "--config", str(config))
    assert result.returncode != 0
    assert "[metrics] listen: '9308' is not HOST:PORT" in result.stderr


def test_the_gauges_follow_the_queue_and_the_loops(
    start_daemon: StartDaemon, redis_db: RedisServer, sqlite_url: str
) -> None:
    port = free_port()
    body = BOOM + f'[metrics]\nlisten = "127.0.0.1:{port}"\n'
    daemon = start_daemon(sqlite_url, body)
    daemon.wait_for_event("expiryd.ready")
    setex(redis_db.client(), "boom:1", 1)
    daemon.wait_for_event("expiry.handled")
    deadline = time.monotonic() + 20  # the gauges are set every few seconds
    while value(scrape(port), "expiryd_jobs", state="dead") != 1:
        assert time.monotonic() < deadline, "expiryd_jobs{state=dead} never reached 1"
        time.sleep(0.5)
    samples = scrape(port)
    assert value(samples, "expiryd_expiries_total", route="boom:{n}", outcome="dead") == 1
    assert value(samples, "expiryd_ledger_keys") == 0
    assert value(samples, "expiryd_last_heartbeat_timestamp_seconds") > time.time() - 30

    redis_db.client().client_kill_filter(_type="pubsub")  # the listener loses Redis...
    daemon.wait_subscribed(2)  # ...and subscribes again
    assert value(scrape(port), "expiryd_redis_reconnects_total") == 1
    assert_queue_settled(redis_db, [daemon], dead=1)

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.daemon import DaemonProcess
from tests.support.servers import RedisServer
from tests.support.shop import ORDER_ROUTES

REPO = Path(__file__).parents[2]


StartDaemon = Callable[..., DaemonProcess]


def write_config(
    path: Path, redis_url: str, database_url: str, body: str = ORDER_ROUTES, redis: str = ""
) -> Path:
    path.write_text(
        f'[redis]\nurl = "{redis_url}"\n{redis}\n[database]\nurl = "{database_url}"\n{body}'
    )
    return path


@pytest.fixture
def start_daemon(tmp_path: Path, redis_db: RedisServer) -> Iterator[StartDaemon]:
    """Start `expiryd run` on a config; every daemon still running at the end is stopped."""
    started: list[DaemonProcess] = []

    def start(
        database_url: str,
        body: str = ORDER_ROUTES,
        *args: str,
        wait: bool = True,
        redis: str = "",
        env: dict[str, str] | None = None,
    ) -> DaemonProcess:
        config = write_config(tmp_path / "expiryd.toml", redis_db.url(), database_url, body, redis)
        daemon = DaemonProcess(config, args, env={"PYTHONPATH": str(REPO), **(env or {})})
        started.append(daemon)
        if wait:
            daemon.wait_subscribed()
        return daemon

    yield start
    for daemon in started:
        daemon.stop()

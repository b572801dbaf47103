"""The listener's way back to Redis: which failures are tried again at once, and how often
an outage is logged."""

from __future__ import annotations

import ssl
import threading
from typing import Any

import pytest
import redis

from expiryd.backoff import Backoff, LogPace
from expiryd.errors import ServiceError
from expiryd.redis.listener import retry_soon


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.lines.append((event, fields))


def wrapped(cause: BaseException) -> redis.ConnectionError:
    """As redis-py raises a failed connect: its own error, the socket's as the cause."""
    error = redis.ConnectionError(f"Error connecting to 127.0.0.1:6379. {cause}")
    error.__cause__ = cause
    return error


@pytest.mark.parametrize(
    "exc",
    [
        wrapped(ConnectionRefusedError(111, "Connection refused")),
        redis.ConnectionError("Connection closed by server."),
        redis.TimeoutError("Timeout connecting to server"),
        redis.BusyLoadingError("Redis is loading the dataset in memory"),
        redis.ConnectionError("max number of clients reached"),
        wrapped(ssl.SSLEOFError(8, "EOF occurred in violation of protocol")),
        ConnectionResetError(104, "Connection reset by peer"),
    ],
)
def test_redis_away_is_tried_again_soon(exc: BaseException) -> None:
    assert retry_soon(exc)


@pytest.mark.parametrize(
    "exc",
    [
        redis.AuthenticationError("invalid username-password pair or user is disabled."),
        redis.exceptions.AuthorizationError("not authorized"),
        wrapped(ssl.SSLCertVerificationError(1, "certificate verify failed")),
        ServiceError("notify-keyspace-events lacks Egx"),
        KeyError("a bug"),
    ],
)
def test_redis_turning_us_away_or_a_bug_is_not(exc: BaseException) -> None:
    assert not retry_soon(exc)


def test_a_run_of_failures_is_logged_first_then_as_the_backoff_grows() -> None:
    clock = Clock()
    pace = LogPace(base=0.5, cap=4, clock=clock)
    logged = []
    for tick in range(80):  # 20 s of failures, one every 0.25 s
        if pace.due():
            logged.append(tick / 4)
        clock.now += 0.25
    assert logged == [0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5]
    pace.reset()
    assert pace.due()


def test_steady_waits_count_every_attempt_log_a_few_and_say_how_long_they_wait() -> None:
    clock, log, stop = Clock(), Log(), threading.Event()
    stop.set()  # the waits return at once
    quiet: list[float] = []
    backoff = Backoff(0.5, 30, beat=lambda quiet_for=0.0: quiet.append(quiet_for), clock=clock)
    for _ in range(10):
        backoff.wait_steadily_after(stop, log, "redis.disconnected", "refused", interval=0.25)
        clock.now += 0.25
    assert [fields["attempt"] for _, fields in log.lines] == [1, 3, 7]  # at 0, 0.5, 1.5 s
    assert log.lines[0] == (
        "redis.disconnected",
        {"error": "refused", "attempt": 1, "retry_in_s": 0.25},
    )
    assert quiet == [0.25] * 10
    assert backoff.failures == 10


def test_steady_waits_do_not_lengthen_the_backoff_of_the_failures_between_them() -> None:
    log, stop = Log(), threading.Event()
    stop.set()
    backoff = Backoff(0.5, 30)
    for _ in range(50):
        backoff.wait_steadily_after(stop, log, "redis.disconnected", "refused", interval=0.1)
    backoff.wait_after(stop, log, "redis.disconnected", "invalid password")
    _, fields = log.lines[-1]
    assert fields["attempt"] == 51
    assert 0.25 <= fields["retry_in_s"] <= 0.5  # the first growing delay, not the cap
    backoff.reset()
    backoff.wait_steadily_after(stop, log, "redis.disconnected", "refused", interval=0.1)
    assert log.lines[-1][1]["attempt"] == 1

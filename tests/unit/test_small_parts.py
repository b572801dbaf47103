import pytest

from expiryd.backoff import backoff_delay
from expiryd.connections import missing_flags
from expiryd.durations import parse_duration
from expiryd.handlers.callables import to_result
from expiryd.logs import display_key, redact_url
from expiryd.outcomes import Outcome, Result


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("2h", 7200), ("10d", 864000), ("1h30m", 5400), ("45", 45)],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "10x", "-5m", "0", "1.5h", "m"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_backoff_grows_then_caps_with_jitter_between_half_and_all() -> None:
    assert backoff_delay(1, 0.5, 30, rand=lambda: 0.0) == 0.25
    assert backoff_delay(1, 0.5, 30, rand=lambda: 1.0) == 0.5
    assert backoff_delay(4, 0.5, 30, rand=lambda: 1.0) == 4.0
    assert backoff_delay(20, 0.5, 30, rand=lambda: 1.0) == 30


@pytest.mark.parametrize(
    ("current", "missing"),
    [("", "Egx"), ("E", "gx"), ("xE", "g"), ("KEA", ""), ("Kgx", "E"), ("AK", "E"), ("xgE", "")],
)
def test_missing_notify_flags(current: str, missing: str) -> None:
    assert missing_flags(current) == missing


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("mysql+pymysql://shop:secret@db:3306/shop", "mysql+pymysql://shop:***@db:3306/shop"),
        ("redis://:pw@127.0.0.1:6379/15", "redis://:***@127.0.0.1:6379/15"),
        ("redis://127.0.0.1:6379/15", "redis://127.0.0.1:6379/15"),
        ("sqlite:///expiryd.sqlite3", "sqlite:///expiryd.sqlite3"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_display_key_is_lenient_and_short() -> None:
    assert display_key(b"order:\xff") == "order:\\xff"
    shown = display_key(b"k" * 100_000)
    assert len(shown) < 300
    assert shown.endswith("(100000 bytes)")


@pytest.mark.parametrize(
    ("returned", "result"),
    [
        (None, Result(Outcome.APPLIED)),
        (True, Result(Outcome.APPLIED)),
        (False, Result(Outcome.SKIPPED)),
        (0, Result(Outcome.SKIPPED, 0)),
        (3, Result(Outcome.APPLIED, 3)),
    ],
)
def test_callable_return_values(returned: object, result: Result) -> None:
    assert to_result(returned) == result


def test_callable_returning_something_else_is_an_error() -> None:
    with pytest.raises(TypeError):
        to_result("done")


def test_backoff_counts_failures_in_a_row_until_reset() -> None:
    from expiryd.backoff import Backoff

    backoff = Backoff(base=1, cap=8)
    delays = [backoff.next_delay() for _ in range(6)]
    assert backoff.failures == 6
    assert all(0.5 <= d <= 8 for d in delays)
    assert 4 <= delays[-1] <= 8
    backoff.reset()
    assert backoff.next_delay() <= 1

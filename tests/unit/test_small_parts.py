import msgpack
import pytest
import redis
import redis.sentinel

from expiryd.backoff import backoff_delay
from expiryd.durations import parse_duration
from expiryd.expiry import Source
from expiryd.handlers.callables import to_result
from expiryd.handlers.orders import coerce
from expiryd.logs import describe_error, display_key
from expiryd.outcomes import Outcome, Result
from expiryd.redact import redact_url, url_passwords
from expiryd.redis.connections import missing_flags
from expiryd.redis.queue import Job


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


@pytest.mark.parametrize(
    "url",
    [
        "mysql+pymysql://shop:pa/ss@db/shop",
        "mysql+pymysql://shop:p#ss@db:3306/shop",
        "mysql+pymysql://shop:p?ss@db/shop",
        "mysql+pymysql://shop:pw@ss@db/shop",
        "mysql+pymysql://shop:50%25off@db/shop",
        "mysql+pymysql://shop:a%2Fb%23c%3Fd%40e%25f@db/shop",
        "mysql+pymysql://shop@db/shop?charset=utf8mb4&password=s3cret-q",
        "redis://:pa%2Fss@127.0.0.1:6379/15",
        "redis://user:p%23s%3Fs%40w%25d@h:1/2",
        "redis://127.0.0.1:6379/3?password=s3cret-q",
        "rediss://u:s3cret-pw@h:6380/0",
        "unix://:s3cret-pw@/run/redis.sock?db=15",
    ],
)
def test_no_password_the_parsers_see_survives_redaction(url: str) -> None:
    shown = redact_url(url)
    secrets = url_passwords(url)
    assert secrets, "the parsers found no password: the test proves nothing"
    assert not any(secret in shown for secret in secrets), shown
    assert "***" in shown


def test_display_key_escapes_control_and_invisible_characters() -> None:
    assert display_key(b"a\x1b[31mb\ncd\x00") == "a\\x1b[31mb\\x0acd\\x00"
    assert display_key("order:\u202eSN1".encode()) == "order:\\u202eSN1"
    assert display_key("订单🙂".encode()) == "订单🙂"


@pytest.mark.parametrize("text", ["٧", "1_000", "+7", " 7\n", "7 ", "0x7", "1" * 20, ""])
def test_only_plain_ascii_digits_count_as_an_integer_order_number(text: str) -> None:
    assert coerce(text, int) is None


def test_plain_digits_are_an_integer_order_number() -> None:
    assert coerce("0042", int) == 42
    assert coerce("-3", int) == -3
    assert coerce("SN1", str) == "SN1"


def test_job_records_are_read_whatever_number_types_lua_packed() -> None:
    record = [b"k", b"nudge", 1.7e12, 1.735e12, False, 2.0, 1, b"", False]
    job = Job.unpack("a" * 32, msgpack.packb(record))
    numbers = (job.deadline_ms, job.enqueued_ms, job.attempt, job.lapses)
    assert numbers == (1735 * 10**9, 17 * 10**11, 2, 1)
    assert all(type(n) is int for n in numbers)
    assert (job.source, job.value, job.failed_ms, job.unreadable) == (Source.NUDGE, None, None, "")


@pytest.mark.parametrize(
    "record",
    [
        b"",
        b"\x93\x01\x02\x03",
        msgpack.packb([b"k"] * 9),
        msgpack.packb(list(range(9))),
        msgpack.packb([b"k", 7, 0, None, None, 0, 0, 5, None]),
        msgpack.packb([b"k", b"event", 1, False, False, 0, 0, b"", None]),
        msgpack.packb([b"k", b"event", 1, False, False, True, 0, b"", False]),
        msgpack.packb([b"k", b"event", 1, False, False, 0, 0, b"", False, 0]),
    ],
)
def test_a_record_expiryd_did_not_write_is_unreadable_not_an_error(record: bytes) -> None:
    job = Job.unpack("a" * 32, record)
    assert job.unreadable.startswith("its record in Redis is not one expiryd wrote")


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


def test_a_sentinel_error_names_each_sentinel_by_its_address_not_its_client() -> None:
    sentinel = redis.sentinel.Sentinel([("127.0.0.1", 1)], socket_connect_timeout=0.5)
    with pytest.raises(redis.sentinel.MasterNotFoundError) as caught:
        sentinel.discover_master("mymaster")
    text = describe_error(caught.value)
    assert "No master found for 'mymaster' : 127.0.0.1:1 - " in text
    assert "ConnectionPool" not in text and "Connection refused" in text

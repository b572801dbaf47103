"""The redis.stream handler: expiries appended to a Redis Stream, read back the way the
README's consumer reads them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.conftest import StartDaemon, assert_queue_settled, write_config
from tests.support.daemon import psetex_many, run_cli, setex
from tests.support.servers import RedisServer

STREAM = (
    '[[routes]]\npattern = "order:cancel:{order_sn}"\nhandler = "redis.stream"\n'
    'stream = "expiryd:expired"\nmaxlen = 1000\n'
)


def test_expiries_reach_the_stream_once_each_with_their_fields_for_a_consumer_group(
    start_daemon: StartDaemon, redis_db: RedisServer, sqlite_url: str
) -> None:
    daemon = start_daemon(sqlite_url, STREAM)
    client = redis_db.client()
    client.xgroup_create("expiryd:expired", "billing", id="0", mkstream=True)
    psetex_many(client, [f"order:cancel:SN{n}" for n in range(50)], 300)
    setex(client, "order:cancel:SN-last", 1, "paid-by-card")
    lines = daemon.wait_for_event("expiry.handled", 51)
    assert {line["outcome"] for line in lines} == {"applied"}

    # The README's consumer: read as a group member, handle, acknowledge.
    reply = client.xreadgroup("billing", "worker-1", {"expiryd:expired": ">"}, count=100)
    ((_, entries),) = reply
    by_key = {fields[b"key"].decode(): fields for _, fields in entries}
    assert len(entries) == len(by_key) == 51
    last = by_key["order:cancel:SN-last"]
    assert json.loads(last[b"fields"]) == {"order_sn": "SN-last"}
    assert last[b"route"] == b"order:cancel:{order_sn}" and last[b"attempt"] == b"1"
    assert int(last[b"lateness_ms"]) >= 0 and last[b"deadline"].endswith(b"+00:00")
    assert {f[b"expiry_id"] for f in by_key.values()} == {
        line["expiry_id"].encode() for line in lines
    }
    assert client.xack("expiryd:expired", "billing", *(i for i, _ in entries)) == 51
    assert client.xpending("expiryd:expired", "billing")["pending"] == 0
    assert_queue_settled(redis_db, [daemon])


@pytest.mark.parametrize(
    ("setting", "error"),
    [
        ("maxlen = 0", "maxlen: a whole number of entries, at least 1"),
        ('consumer = "x"', "unknown setting 'consumer' for handler 'redis.stream'"),
    ],
)
def test_a_bad_stream_setting_is_one_line_naming_the_route(
    tmp_path: Path, redis_db: RedisServer, sqlite_url: str, setting: str, error: str
) -> None:
    body = '[[routes]]\npattern = "s:{n}"\nhandler = "redis.stream"\n' + setting + "\n"
    config = write_config(tmp_path / "expiryd.toml", redis_db.url(), sqlite_url, body)
    result = run_cli("run", "--config", str(config))
    assert result.returncode != 0
    (line,) = result.stderr.splitlines()
    assert "[[routes]] #1 ('s:{n}' -> 'redis.stream')" in line and line.endswith(error)

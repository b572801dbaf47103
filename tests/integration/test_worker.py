"""The worker in-process against a real redis-server, its lines read with structlog's
capture_logs."""

from __future__ import annotations

import json
import time
import tomllib
from pathlib import Path

import pytest
import redis
from structlog.testing import capture_logs

from expiryd import config
from expiryd.database.engine import make_engine
from expiryd.handlers import build_handlers
from expiryd.outcomes import Outcome
from expiryd.redis.keyfilter import KeyFilter
from expiryd.redis.ledger import Ledger, Op, Step
from expiryd.redis.queue import JobQueue
from expiryd.tally import Tally
from expiryd.worker import Worker
from tests.integration.conftest import KEYSPACE

TWO_SLOW_ROUTES = """
[[routes]]
pattern = "a:{n}"
handler = "tests.support.hooks:record_span"

[[routes]]
pattern = "b:{n}"
handler = "tests.support.hooks:record_span"
"""


def test_each_group_of_a_batch_measures_its_lateness_when_it_starts(
    client: redis.Redis, sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two routes' groups in one batch, both due at the same moment, each handler call
    taking 1 s: the group run second starts a second late, and its line and its metric
    say so, not the lateness the batch had when it was taken."""
    spans = tmp_path / "spans.jsonl"
    monkeypatch.setenv("HOOK_OUT", str(spans))
    monkeypatch.setenv("HOOK_SLEEP", "1")
    loaded = config.parse(
        tomllib.loads(TWO_SLOW_ROUTES), "t.toml", {"EXPIRYD_DATABASE_URL": sqlite_url}
    )
    engine = make_engine(loaded.database)
    due_ms = int(time.time() * 1000) - 5
    client.zadd(KEYSPACE.deadlines, {"a:1": due_ms, "b:1": due_ms})
    Ledger(client, KEYSPACE).apply([Step(Op.CLAIM, b"a:1"), Step(Op.CLAIM, b"b:1")])
    tally = Tally()
    measured: dict[str, float | None] = {}
    tally.watchers.append(lambda route, _, lateness: measured.update({route: lateness}))

    with capture_logs() as logs:
        handlers = build_handlers(loaded, engine, client)
        queue = JobQueue(client, KEYSPACE)
        worker = Worker(
            queues=lambda: [queue],
            routes=loaded.routes,
            handlers=handlers,
            settings=loaded.worker,
            keys=KeyFilter(KEYSPACE.prefix.encode(), 1024),
            tally=tally,
        )
        worker.work(burst=True)
    engine.dispose()

    began = {span["key"]: span["began"] for span in map(json.loads, spans.read_text().splitlines())}
    handled = sorted(
        (x for x in logs if x["event"] == "expiry.handled"), key=lambda x: began[x["key"]]
    )
    assert [x["outcome"] for x in handled] == [Outcome.APPLIED.value] * 2
    for line in handled:  # measured as its group started, just before the call
        started_ms = began[line["key"]] * 1000 - due_ms
        assert started_ms - 100 <= line["lateness_ms"] <= started_ms, line
        assert measured[line["route"]] == line["lateness_ms"] / 1000
    first, second = handled
    assert first["lateness_ms"] < 500
    assert second["lateness_ms"] >= 1000, f"the group run second: {second}"

"""Callable handlers that the tests route keys to."""

from __future__ import annotations

import json
import os
import time
from functools import cache

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import NullPool

from expiryd.expiry import Expiry

CALLS_TABLE = "CREATE TABLE calls (key_name VARCHAR(200), expiry_id VARCHAR(64), attempt INTEGER)"


seen: list[Expiry] = []


def remember(expiry: Expiry) -> None:
    seen.append(expiry)


def explode(expiry: Expiry) -> None:
    raise RuntimeError(f"boom for {expiry.fields}")


def accept(expiry: Expiry) -> None:
    """Does nothing, fast: for tests that count expiries in the log."""


def save_value(expiry: Expiry) -> None:
    """Appends the key, value, id, attempt and deadline it received to $HOOK_OUT."""
    with open(os.environ["HOOK_OUT"], "a") as out:
        value = expiry.value.decode() if expiry.value is not None else None
        deadline = expiry.deadline.isoformat() if expiry.deadline else None
        fields = {"key": expiry.key, "value": value, "id": expiry.id}
        out.write(json.dumps({**fields, "attempt": expiry.attempt, "deadline": deadline}) + "\n")


@cache
def _engine() -> Engine:
    url = os.environ["HOOK_DATABASE_URL"]
    # As expiryd does: PyMySQL would otherwise build a TLS context on every connect.
    args = {"ssl_disabled": True} if url.startswith("mysql") else {}
    return create_engine(url, poolclass=NullPool, connect_args=args)


def record_call(expiry: Expiry) -> None:
    """One row per call, committed: a second run shows even where a status guard hides it."""
    with _engine().begin() as connection:
        connection.execute(
            text("INSERT INTO calls (key_name, expiry_id, attempt) VALUES (:k, :i, :a)"),
            {"k": expiry.key, "i": expiry.id, "a": expiry.attempt},
        )


def cancel_and_record(expiry: Expiry) -> int:
    """orders.cancel's UPDATE plus one row per call, in one transaction: a second run
    shows as a second row even where the status guard makes it change nothing."""
    with _engine().begin() as connection:
        changed = connection.execute(
            text("UPDATE orders SET status = 3 WHERE order_sn = :sn AND status = 0"),
            {"sn": expiry.fields["order_sn"]},
        ).rowcount
        connection.execute(
            text("INSERT INTO calls (key_name, expiry_id, attempt) VALUES (:k, :i, :a)"),
            {"k": expiry.key, "i": expiry.id, "a": expiry.attempt},
        )
    return int(changed)


def record_call_slowly(expiry: Expiry) -> None:
    """Takes $HOOK_SLEEP seconds before recording its call."""
    time.sleep(float(os.environ.get("HOOK_SLEEP", "5")))
    record_call(expiry)


def exit_on_poison(expiry: Expiry) -> None:
    """Ends the whole process, as a crash in a C extension would, on `p:poison`; records
    its call on any other key."""
    if expiry.fields["n"] == "poison":
        os._exit(3)
    record_call(expiry)


def fail_once_then_record(expiry: Expiry) -> None:
    if expiry.attempt == 1:
        raise ConnectionError("the shop's service is down")
    record_call(expiry)


def raise_named(expiry: Expiry) -> None:
    """Raises what the key names, e.g. `raise:SystemExit`: the worker must survive it."""
    import asyncio

    kinds: dict[str, type[BaseException]] = {
        "SystemExit": SystemExit,
        "KeyboardInterrupt": KeyboardInterrupt,
        "CancelledError": asyncio.CancelledError,
        "GeneratorExit": GeneratorExit,
    }
    raise kinds[expiry.fields["kind"]]()


def record_span(expiry: Expiry) -> None:
    """Sleeps $HOOK_SLEEP seconds, then appends the key, its id and when the call began
    and ended, and the process that ran it, to $HOOK_OUT."""
    began = time.time()
    time.sleep(float(os.environ.get("HOOK_SLEEP", "1")))
    span = {"key": expiry.key, "id": expiry.id, "began": began, "ended": time.time()}
    with open(os.environ["HOOK_OUT"], "a") as out:
        out.write(json.dumps({**span, "pid": os.getpid()}) + "\n")


def hang_until_released(expiry: Expiry) -> None:
    """Does not return until the file $HOOK_RELEASE exists (a minute at most): a handler
    stuck on something that never answers."""
    release = os.environ["HOOK_RELEASE"]
    deadline = time.monotonic() + 60
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.05)

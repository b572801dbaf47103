"""Callable handlers that the tests route keys to."""

import json
import os

from expiryd.expiry import Expiry

seen: list[Expiry] = []


def remember(expiry: Expiry) -> None:
    seen.append(expiry)


def explode(expiry: Expiry) -> None:
    raise RuntimeError(f"boom for {expiry.fields}")


def accept(expiry: Expiry) -> None:
    """Does nothing, fast: for tests that count expiries in the log."""


def save_value(expiry: Expiry) -> None:
    """Appends the key and the value it received to the file named by $HOOK_OUT."""
    with open(os.environ["HOOK_OUT"], "a") as out:
        value = expiry.value.decode() if expiry.value is not None else None
        out.write(json.dumps({"key": expiry.key, "value": value}) + "\n")

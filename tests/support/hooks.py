"""Callable handlers that the tests route keys to."""

from expiryd.expiry import Expiry

seen: list[Expiry] = []


def remember(expiry: Expiry) -> None:
    seen.append(expiry)


def explode(expiry: Expiry) -> None:
    raise RuntimeError(f"boom for {expiry.fields}")

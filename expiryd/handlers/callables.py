"""module:function handlers: any importable callable.

The callable receives one `expiryd.Expiry` (key, route, fields, value, deadline) and returns
None or True (applied), False (skipped), or a count of rows changed (0 means skipped).
It runs in the daemon's worker; a raised exception makes the outcome `failed`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from expiryd.errors import ConfigError
from expiryd.expiry import Expiry
from expiryd.outcomes import Outcome, Result
from expiryd.routes import Route


@dataclass(frozen=True)
class CallableHandler:
    function: Callable[[Expiry], Any]

    def __call__(self, expiry: Expiry) -> Result:
        return to_result(self.function(expiry))


def to_result(returned: Any) -> Result:
    if returned is None or returned is True:
        return Result(Outcome.APPLIED)
    if returned is False:
        return Result(Outcome.SKIPPED)
    if isinstance(returned, int):
        return Result.from_rows(returned)
    raise TypeError(f"handler returned {type(returned).__name__}; expected None, bool or int")


def build(route: Route) -> CallableHandler:
    if route.options:
        raise ConfigError(f"unknown setting {sorted(route.options)[0]!r} for a callable handler")
    module_name, _, attribute = route.handler.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ConfigError(f"cannot import {module_name!r}: {exc} (is it on PYTHONPATH?)") from None
    function = getattr(module, attribute, None)
    if not callable(function):
        raise ConfigError(f"{module_name!r} has no callable named {attribute!r}")
    return CallableHandler(function)

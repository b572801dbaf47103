"""Structured logs: JSON lines on stdout for journald, a readable renderer on a terminal.

Nothing that may hold a secret is logged as given: URLs go through `redact.redact_url`
and errors through `describe_error`.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from expiryd import defaults
from expiryd.redact import scrub

FORMATS = ("auto", "json", "journal", "console")
"""journal: JSON lines, each behind the `<N>` syslog priority that journald reads (and
strips), so that `journalctl -p warning` shows warnings and worse."""

HANDLED_FIELDS = frozenset(
    {
        "key", "route", "handler", "expiry_id", "attempt", "deadline", "lateness_ms",
        "recovered", "source", "outcome", "rows", "duration_ms", "reason", "error",
        "retry_in_s", "log_error", "value", "committed_by_attempt",
    }
)  # fmt: skip
"""The fields of an `expiry.handled` line besides a route's own."""

RESERVED_FIELDS = HANDLED_FIELDS | {
    # added by the processors, or the names of the logging call's own parameters
    "event", "level", "timestamp", "logger", "exc_info", "exception", "self", "method_name",
}  # fmt: skip
"""Names a route's field may not take: they would collide with the line's own."""
LEVELS = ("debug", "info", "warning", "error")


def configure(log_format: str = "auto", level: str = "info") -> None:
    """Set up structlog once, before the first line is logged."""
    if log_format == "auto":
        log_format = "console" if sys.stdout.isatty() else "json"
    as_json = log_format in ("json", "journal")
    renderers: list[Any] = (
        [
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ]
        if as_json
        else [_escape_strings, structlog.dev.ConsoleRenderer()]
    )
    if log_format == "journal":
        renderers.append(_add_priority)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _remember_problem,
            *renderers,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=(
            structlog.BytesLoggerFactory(sys.stdout.buffer)
            if as_json
            else structlog.PrintLoggerFactory(sys.stdout)
        ),
        cache_logger_on_first_use=True,
    )


_last_problem: dict[str, Any] | None = None


def last_problem() -> dict[str, Any] | None:
    """The last line logged at warning level or worse: its event, level, time and error."""
    return _last_problem


def _remember_problem(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    global _last_problem
    if event.get("level") in ("warning", "error", "critical"):
        fields = ("event", "level", "timestamp", "error", "key", "thread")
        _last_problem = {name: event[name] for name in fields if event.get(name) is not None}
    return event


def get_logger(**context: Any) -> Any:
    return structlog.get_logger(**context)


def describe_error(exc: BaseException) -> str:
    """`Type: message` of the error a driver raised, without SQL parameters or URLs."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        exc = exc.orig
    elif isinstance(exc, SQLAlchemyError):
        return scrub(f"{type(exc).__name__}: {exc.args[0] if exc.args else ''}")
    # redis-py names each sentinel it asked by its client's whole repr: the address will do.
    text = _CLIENT_REPR.sub(lambda m: f"{m['host']}:{m['port']}", str(exc))
    return scrub(f"{type(exc).__name__}: {text}")


_CLIENT_REPR = re.compile(
    r"<redis\.client\.Redis\(.*?,host=(?P<host>[^,]+),port=(?P<port>\d+),.*?\)>\)>\)>"
)


def display_key(raw: bytes) -> str:
    """A key name safe to put in a log line or on a terminal: decoded leniently, control
    and formatting characters escaped, and shortened when long."""
    text = raw.decode("utf-8", errors="backslashreplace")
    if len(text) > defaults.LOG_KEY_CHARS:
        text = f"{text[: defaults.LOG_KEY_CHARS]}…({len(raw)} bytes)"
    return escape_text(text)


def escape_text(text: str) -> str:
    """`text` with control and invisible characters as `\\x..`/`\\u....` escapes, so that it
    cannot move the cursor, clear the screen or reorder what a terminal shows."""
    return _UNSAFE.sub(_escape, text)


_PRIORITIES = {"debug": b"<7>", "info": b"<6>", "warning": b"<4>", "warn": b"<4>", "error": b"<3>"}
"""syslog priorities by the name of the logging method: debug, info, warning, err."""


def _add_priority(_logger: Any, method: str, line: bytes) -> bytes:
    return _PRIORITIES.get(method, b"<2>" if method in ("critical", "fatal") else b"<3>") + line


def _escape_strings(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    """For the console: JSON escapes such characters itself, a terminal would obey them."""
    return {k: escape_text(v) if isinstance(v, str) else v for k, v in event.items()}


_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]")
"""Control characters, and the invisible ones that reorder or hide text on a terminal."""


def _escape(found: re.Match[str]) -> str:
    code = ord(found.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

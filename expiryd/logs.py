"""Structured logs: JSON lines on stdout for journald, a readable renderer on a terminal.

Nothing that may hold a secret is logged as given: URLs go through `redact.redact_url`
and errors through `describe_error`.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import orjson
import structlog
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from expiryd import defaults
from expiryd.redact import scrub

FORMATS = ("auto", "json", "console")

HANDLED_FIELDS = frozenset(
    {
        "key", "route", "handler", "expiry_id", "attempt", "deadline", "lateness_ms",
        "recovered", "source", "outcome", "rows", "duration_ms", "reason", "error",
        "retry_in_s", "log_error", "value",
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
    renderers: list[Any] = (
        [
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ]
        if log_format == "json"
        else [_escape_strings, structlog.dev.ConsoleRenderer()]
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *renderers,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=(
            structlog.BytesLoggerFactory(sys.stdout.buffer)
            if log_format == "json"
            else structlog.PrintLoggerFactory(sys.stdout)
        ),
        cache_logger_on_first_use=True,
    )


def get_logger(**context: Any) -> Any:
    return structlog.get_logger(**context)


def describe_error(exc: BaseException) -> str:
    """`Type: message` of the error a driver raised, without SQL parameters or URLs."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        exc = exc.orig
    elif isinstance(exc, SQLAlchemyError):
        return scrub(f"{type(exc).__name__}: {exc.args[0] if exc.args else ''}")
    return scrub(f"{type(exc).__name__}: {exc}")


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


def _escape_strings(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    """For the console: JSON escapes such characters itself, a terminal would obey them."""
    return {k: escape_text(v) if isinstance(v, str) else v for k, v in event.items()}


_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]")
"""Control characters, and the invisible ones that reorder or hide text on a terminal."""


def _escape(found: re.Match[str]) -> str:
    code = ord(found.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

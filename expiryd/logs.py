"""Structured logs: JSON lines on stdout for journald, a readable renderer on a terminal.

Nothing that may hold a secret is logged as given: URLs go through `redact_url` and
errors through `describe_error`.
"""

from __future__ import annotations

import logging
import sys
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import structlog
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from expiryd import defaults

FORMATS = ("auto", "json", "console")
LEVELS = ("debug", "info", "warning", "error")


def configure(log_format: str = "auto", level: str = "info") -> None:
    """Set up structlog once, before the first line is logged."""
    if log_format == "auto":
        log_format = "console" if sys.stdout.isatty() else "json"
    renderer: Any = (
        structlog.processors.JSONRenderer(ensure_ascii=False)
        if log_format == "json"
        else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )


def get_logger(**context: Any) -> Any:
    return structlog.get_logger(**context)


def redact_url(url: str) -> str:
    """The URL with any password replaced by ***."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


def describe_error(exc: BaseException) -> str:
    """`Type: message` of the error a driver raised, without SQL parameters or URLs."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        exc = exc.orig
    elif isinstance(exc, SQLAlchemyError):
        return f"{type(exc).__name__}: {exc.args[0] if exc.args else ''}"
    return f"{type(exc).__name__}: {exc}"


def display_key(raw: bytes) -> str:
    """A key name safe to put in a log line: decoded leniently, and shortened when long."""
    text = raw.decode("utf-8", errors="backslashreplace")
    if len(text) <= defaults.LOG_KEY_CHARS:
        return text
    return f"{text[: defaults.LOG_KEY_CHARS]}…({len(raw)} bytes)"

"""Key patterns and the routes that send matching keys to a handler.

A pattern is literal text with `{field}` placeholders. A field matches one or more
characters other than ":", so `{order_sn}:{use_mysql}` matches `SN1700000000T12345678:1`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from expiryd.retries import RetryPolicy

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

RESERVED_FIELDS = frozenset(
    {
        "event",
        "level",
        "timestamp",
        "logger",
        "key",
        "route",
        "handler",
        "outcome",
        "rows",
        "duration_ms",
        "error",
        "value",
        "deadline",
        "lateness_ms",
        "recovered",
        "source",
        "attempt",
        "expiry_id",
        "reason",
        "exc_info",
        "channel",
    }
)
"""Names a field may not take: they are the log line's own fields."""


class PatternError(ValueError):
    """The pattern text is not a valid pattern; the message says why."""


@dataclass(frozen=True)
class Pattern:
    text: str
    fields: tuple[str, ...]
    regex: re.Pattern[str] = field(repr=False, compare=False)

    @classmethod
    def parse(cls, text: str) -> Pattern:
        parts: list[str] = []
        fields: list[str] = []
        position = 0
        for placeholder in _PLACEHOLDER.finditer(text):
            literal = text[position : placeholder.start()]
            name = placeholder.group(1)
            _check_field(name, fields, literal)
            parts.append(re.escape(literal))
            parts.append(f"(?P<{name}>[^:]+)")
            fields.append(name)
            position = placeholder.end()
        if not text:
            raise PatternError("empty pattern")
        if any("{" in literal or "}" in literal for literal in _PLACEHOLDER.split(text)[::2]):
            raise PatternError("unbalanced '{' or '}'")
        parts.append(re.escape(text[position:]))
        return cls(text, tuple(fields), re.compile("".join(parts)))

    def match(self, key: str) -> dict[str, str] | None:
        found = self.regex.fullmatch(key)
        return found.groupdict() if found else None


def _check_field(name: str, seen: list[str], literal: str) -> None:
    if not _FIELD_NAME.match(name):
        raise PatternError(f"{{{name}}} is not a field name (letters, digits, _)")
    if name in seen:
        raise PatternError(f"field {{{name}}} appears twice")
    if name in RESERVED_FIELDS:
        raise PatternError(f"field {{{name}}} is reserved for the log line; rename it")
    if seen and not literal:
        raise PatternError(f"{{{name}}} follows another field directly; separate them with text")


@dataclass(frozen=True)
class Route:
    """A pattern and the handler its keys go to, with that handler's own settings."""

    name: str
    pattern: Pattern
    handler: str
    options: dict[str, Any] = field(default_factory=dict, compare=False)
    """The handler's own settings, e.g. `sql`."""
    retry: RetryPolicy = field(default_factory=RetryPolicy)


@dataclass(frozen=True)
class Match:
    route: Route
    fields: dict[str, str]


def match_route(routes: Sequence[Route], key: str) -> Match | None:
    """The first route whose pattern matches the whole key, with the captured fields."""
    for route in routes:
        fields = route.pattern.match(key)
        if fields is not None:
            return Match(route, fields)
    return None

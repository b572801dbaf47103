"""Key patterns and the routes that send matching keys to a handler.

A pattern is literal text with `{field}` placeholders. A field matches one or more
characters other than ":", so `{order_sn}:{use_mysql}` matches `SN1700000000T12345678:1`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from expiryd.logs import RESERVED_FIELDS
from expiryd.retries import RetryPolicy

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class PatternError(ValueError):
    """The pattern text is not a valid pattern; the message says why."""


@dataclass(frozen=True)
class Pattern:
    text: str
    fields: tuple[str, ...]
    regex: re.Pattern[str] = field(repr=False, compare=False)
    parts: tuple[str | None, ...] = field(default=(), repr=False, compare=False)
    """Literal texts, and None for each field, in order."""

    @classmethod
    def parse(cls, text: str) -> Pattern:
        regex: list[str] = []
        parts: list[str | None] = []
        fields: list[str] = []
        position = 0
        for placeholder in _PLACEHOLDER.finditer(text):
            literal = text[position : placeholder.start()]
            name = placeholder.group(1)
            _check_field(name, fields, literal)
            regex += [re.escape(literal), f"(?P<{name}>[^:]+)"]
            parts += [literal, None]
            fields.append(name)
            position = placeholder.end()
        if not text:
            raise PatternError("empty pattern")
        if any("{" in literal or "}" in literal for literal in _PLACEHOLDER.split(text)[::2]):
            raise PatternError("unbalanced '{' or '}'")
        regex.append(re.escape(text[position:]))
        parts.append(text[position:])
        parts = [part for part in parts if part != ""]
        return cls(text, tuple(fields), re.compile("".join(regex)), tuple(parts))

    @property
    def literal_start(self) -> str:
        """The text every matching key starts with."""
        first = self.parts[0] if self.parts else None
        return first or ""

    def can_start_with(self, prefix: str) -> bool:
        """Whether some key this pattern matches starts with `prefix`."""
        states = _advance_empty(self.parts, {(0, 0)})
        for char in prefix:
            states = _advance_empty(self.parts, _step(self.parts, states, char))
            if not states:
                return False
        return True

    def match(self, key: str) -> dict[str, str] | None:
        found = self.regex.fullmatch(key)
        return found.groupdict() if found else None


def _step(
    parts: tuple[str | None, ...], states: set[tuple[int, int]], char: str
) -> set[tuple[int, int]]:
    """Where each (part, characters of it matched) goes on one more character."""
    after = set()
    for index, taken in states:
        if index == len(parts):
            continue
        part = parts[index]
        if part is None and char != ":":
            after.add((index, 1))
        elif part is not None and taken < len(part) and part[taken] == char:
            after.add((index, taken + 1))
    return after


def _advance_empty(
    parts: tuple[str | None, ...], states: set[tuple[int, int]]
) -> set[tuple[int, int]]:
    """The states plus those reached by finishing a part (a whole literal, or a field
    with at least one character) without reading more."""
    done = set(states)
    todo = list(states)
    while todo:
        index, taken = todo.pop()
        if index < len(parts):
            part = parts[index]
            finished = taken >= 1 if part is None else taken == len(part)
            if finished and (index + 1, 0) not in done:
                done.add((index + 1, 0))
                todo.append((index + 1, 0))
    return done


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

"""The configuration: one TOML file plus environment overrides, parsed into frozen dataclasses.

Everything is checked here, at the edge; the rest of expiryd trusts what it gets.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from expiryd import defaults
from expiryd.errors import ConfigError
from expiryd.redact import password_misread, redact_url, remember
from expiryd.redis.cluster import ClusterSeeds
from expiryd.redis.nodes import NodeUrlError
from expiryd.redis.sentinel import SentinelGroup
from expiryd.retries import RetryPolicy
from expiryd.routes import Pattern, PatternError, Route

ENV_REDIS_URL = "EXPIRYD_REDIS_URL"
ENV_DATABASE_URL = "EXPIRYD_DATABASE_URL"
ENV_CONFIG = "EXPIRYD_CONFIG"
ENV_CREDENTIALS = "CREDENTIALS_DIRECTORY"
"""Where systemd puts the files named by the unit's LoadCredential= lines."""
CREDENTIAL_REDIS_URL = "redis_url"
CREDENTIAL_DATABASE_URL = "database_url"

POOLS = ("none", "queue")
TLS_MODES = ("off", "required")

DEFAULT_ROUTES = (
    {"pattern": "order:cancel:{order_sn}", "handler": "orders.cancel"},
    {"pattern": "order:complete:{order_sn}", "handler": "orders.complete"},
)
"""Used when the file has no [[routes]]."""


@dataclass(frozen=True)
class RedisSettings:
    url: str = field(repr=False)
    prefix: str = defaults.KEY_PREFIX
    max_key_bytes: int = defaults.MAX_KEY_BYTES
    capture_values: bool = defaults.CAPTURE_VALUES
    max_value_bytes: int = defaults.MAX_VALUE_BYTES


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = field(repr=False)
    pool: str = defaults.DATABASE_POOL
    tls: str = defaults.DATABASE_TLS
    tls_ca: str | None = None
    inbox: bool = defaults.INBOX
    inbox_table: str = defaults.INBOX_TABLE


@dataclass(frozen=True)
class StatusChange:
    """Move an order whose status is one of `sources` to `target`."""

    sources: tuple[int | str, ...]
    target: int | str


@dataclass(frozen=True)
class OrdersSettings:
    table: str = defaults.ORDERS_TABLE
    key_column: str = defaults.ORDERS_KEY_COLUMN
    status_column: str = defaults.ORDERS_STATUS_COLUMN
    cancel: StatusChange = StatusChange(defaults.ORDERS_CANCEL_FROM, defaults.ORDERS_CANCEL_TO)
    complete: StatusChange = StatusChange(
        defaults.ORDERS_COMPLETE_FROM, defaults.ORDERS_COMPLETE_TO
    )


@dataclass(frozen=True)
class WorkerSettings:
    lease_seconds: int = defaults.LEASE_SECONDS
    grace_seconds: int = defaults.GRACE_SECONDS
    batch_size: int = defaults.BATCH_SIZE
    concurrency: int = defaults.CONCURRENCY


@dataclass(frozen=True)
class MetricsSettings:
    listen: tuple[str, int] | None = None
    """Where the Prometheus endpoint listens (host, port); None: no endpoint."""


@dataclass(frozen=True)
class Config:
    source: str
    """The file this came from, for error messages ("(defaults)" when there was none)."""
    redis: RedisSettings
    database: DatabaseSettings
    orders: OrdersSettings
    routes: tuple[Route, ...]
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    """The retry policy of routes that do not set their own."""
    metrics: MetricsSettings = field(default_factory=MetricsSettings)


def load(path: str | None = None, environ: Mapping[str, str] = os.environ) -> Config:
    """Read the config file (the default path may be absent) and apply the environment."""
    explicit = path or environ.get(ENV_CONFIG)
    chosen = Path(explicit or defaults.CONFIG_PATH)
    if _exists(chosen):
        raw = _read_toml(chosen)
        source = str(chosen)
    elif explicit:
        raise ConfigError(f"{chosen}: no such file")
    else:
        raw, source = {}, "(defaults)"
    return parse(raw, source, environ)


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError as exc:  # e.g. a directory this user may not enter
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None


def parse(raw: Mapping[str, Any], source: str, environ: Mapping[str, str]) -> Config:
    section = _Section(source, "", raw)
    section.only("redis", "database", "orders", "worker", "retry", "routes", "metrics")
    retry = _parse_retry(section.table("retry"), RetryPolicy())
    credentials = _credentials(environ)
    redis_settings = _parse_redis(section.table("redis"), environ, credentials)
    routes = _parse_routes(source, raw.get("routes", DEFAULT_ROUTES), retry)
    _check_prefix(section.table("redis"), redis_settings.prefix, routes)
    return Config(
        source=source,
        redis=redis_settings,
        database=_parse_database(section.table("database"), environ, credentials),
        orders=_parse_orders(section.table("orders")),
        routes=routes,
        worker=_parse_worker(section.table("worker")),
        retry=retry,
        metrics=_parse_metrics(section.table("metrics")),
    )


def _credentials(environ: Mapping[str, str]) -> dict[str, str]:
    """The URLs systemd passed as credentials (LoadCredential=), by name."""
    directory = environ.get(ENV_CREDENTIALS)
    found: dict[str, str] = {}
    if not directory:
        return found
    for name in (CREDENTIAL_REDIS_URL, CREDENTIAL_DATABASE_URL):
        path = Path(directory) / name
        try:
            value = path.read_text().strip()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read credential: {exc.strerror}") from None
        if value:  # an empty file (as installed) leaves the URL to the config file
            found[name] = value
    return found


def _url(
    section: _Section, env_name: str, credential: str, found: Mapping[str, str], default: str
) -> str:
    """A URL from the environment, else a systemd credential, else the file; remembered
    so that no message ever shows its password."""
    url = found.get(env_name) or found.get(credential) or section.get("url", str, default)
    remember(url)
    if password_misread(url):
        raise section.fail(
            "url",
            f"{redact_url(url)!r}: the password holds a character that ends it early; "
            "write @ as %40, # as %23, / as %2F, ? as %3F and % as %25",
        )
    return str(url)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 (byte {exc.start}): save it as UTF-8") from None


class _Section:
    """One TOML table, with errors that name the file and the setting."""

    def __init__(self, source: str, where: str, data: Mapping[str, Any]) -> None:
        self.source, self.where, self.data = source, where, data

    def fail(self, setting: str, problem: str) -> ConfigError:
        location = f"{self.where} {setting}".strip()
        return ConfigError(f"{self.source}: {location}: {problem}")

    def only(self, *allowed: str) -> None:
        for setting in self.data:
            if setting not in allowed:
                raise self.fail(setting, f"unknown setting (known: {', '.join(allowed)})")

    def table(self, name: str) -> _Section:
        value = self.data.get(name, {})
        if not isinstance(value, dict):
            raise self.fail(name, f"must be a table, e.g. [{name}]")
        return _Section(self.source, f"[{name}]", value)

    def get(self, setting: str, kind: type | tuple[type, ...], default: Any) -> Any:
        kinds = kind if isinstance(kind, tuple) else (kind,)
        value = self.data.get(setting, default)
        is_bool = isinstance(value, bool) and bool not in kinds
        if value is not None and (is_bool or not isinstance(value, kinds)):
            raise self.fail(setting, f"must be {_kind_name(kinds)}, not {value!r}")
        return value

    def choice(self, setting: str, choices: tuple[str, ...], default: str) -> str:
        value = self.get(setting, str, default)
        if value not in choices:
            raise self.fail(setting, f"must be one of {', '.join(map(repr, choices))}")
        return str(value)


def _kind_name(kinds: tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", bool: "true or false", list: "a list"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _parse_redis(
    section: _Section, environ: Mapping[str, str], credentials: Mapping[str, str]
) -> RedisSettings:
    section.only("url", "prefix", "max_key_bytes", "capture_values", "max_value_bytes")
    found = {**credentials, **{k: v for k, v in environ.items() if k == ENV_REDIS_URL}}
    url = _url(section, ENV_REDIS_URL, CREDENTIAL_REDIS_URL, found, defaults.REDIS_URL)
    schemes = (
        *("redis://", "rediss://", "unix://"),
        *("redis+sentinel://", "rediss+sentinel://", "redis+cluster://", "rediss+cluster://"),
    )
    if not url.startswith(schemes):
        raise section.fail("url", f"must start with {', '.join(schemes[:-1])} or {schemes[-1]}")
    try:
        _parse_redis_url(url)
    except NodeUrlError as exc:
        raise section.fail("url", f"{redact_url(url)!r}: {exc}") from None
    except ValueError:
        # The parser's own message may quote part of the password: never show it.
        raise section.fail(
            "url",
            f"{redact_url(url)!r} is not a Redis URL; in a password, write / as %2F, "
            "# as %23, ? as %3F, @ as %40 and % as %25",
        ) from None
    prefix = section.get("prefix", str, defaults.KEY_PREFIX)
    if not prefix:
        raise section.fail("prefix", "must not be empty")
    max_key_bytes = section.get("max_key_bytes", int, defaults.MAX_KEY_BYTES)
    if max_key_bytes < 16:
        raise section.fail("max_key_bytes", "must be at least 16")
    return RedisSettings(
        url=url,
        prefix=prefix,
        max_key_bytes=max_key_bytes,
        capture_values=section.get("capture_values", bool, defaults.CAPTURE_VALUES),
        max_value_bytes=_positive(section, "max_value_bytes", defaults.MAX_VALUE_BYTES),
    )


def _parse_redis_url(url: str) -> None:
    """Parse it, and build (without connecting) a client of it, which refuses a setting
    in the query string that redis-py does not know."""
    try:
        if url.startswith(("redis+sentinel://", "rediss+sentinel://")):
            group = SentinelGroup.from_url(url)
            group.node_client(group.sentinels[0]).close()
        elif url.startswith(("redis+cluster://", "rediss+cluster://")):
            seeds = ClusterSeeds.from_url(url)
            seeds.node_client(seeds.seeds[0]).close()
        else:
            redis.ConnectionPool.from_url(url)
    except TypeError as exc:  # the message names the setting, never its value
        raise NodeUrlError(
            f"a setting in the query string is not one redis-py takes ({exc})"
        ) from None


def _check_prefix(section: _Section, prefix: str, routes: tuple[Route, ...]) -> None:
    """Keys under the prefix are expiryd's own and never routed: a route whose keys
    could start with it would silently lose them."""
    for route in routes:
        if route.pattern.literal_start and route.pattern.can_start_with(prefix):
            raise section.fail(
                "prefix",
                f"{prefix!r} is where expiryd keeps its own keys, and route "
                f"{route.name!r} matches keys that start with it, which would never be "
                "handled; choose another prefix",
            )


def _parse_database(
    section: _Section, environ: Mapping[str, str], credentials: Mapping[str, str]
) -> DatabaseSettings:
    section.only("url", "pool", "tls", "tls_ca", "inbox", "inbox_table")
    found = {**credentials, **{k: v for k, v in environ.items() if k == ENV_DATABASE_URL}}
    url = _url(section, ENV_DATABASE_URL, CREDENTIAL_DATABASE_URL, found, defaults.DATABASE_URL)
    return DatabaseSettings(
        url=url,
        pool=section.choice("pool", POOLS, defaults.DATABASE_POOL),
        tls=section.choice("tls", TLS_MODES, defaults.DATABASE_TLS),
        tls_ca=section.get("tls_ca", str, None),
        inbox=section.get("inbox", bool, defaults.INBOX),
        inbox_table=_identifier(section, "inbox_table", defaults.INBOX_TABLE),
    )


def _parse_worker(section: _Section) -> WorkerSettings:
    section.only("lease_seconds", "grace_seconds", "batch_size", "concurrency")
    return WorkerSettings(
        lease_seconds=_positive(section, "lease_seconds", defaults.LEASE_SECONDS),
        grace_seconds=_positive(section, "grace_seconds", defaults.GRACE_SECONDS),
        batch_size=_positive(
            section, "batch_size", defaults.BATCH_SIZE, at_most=defaults.BATCH_SIZE_LIMIT
        ),
        concurrency=_positive(
            section, "concurrency", defaults.CONCURRENCY, at_most=defaults.CONCURRENCY_LIMIT
        ),
    )


def _parse_metrics(section: _Section) -> MetricsSettings:
    section.only("listen")
    listen = section.get("listen", str, None)
    if listen is None:
        return MetricsSettings()
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise section.fail("listen", f'{listen!r} is not HOST:PORT, e.g. "127.0.0.1:9308"')
    return MetricsSettings((host, int(port)))


def _parse_retry(section: _Section, base: RetryPolicy) -> RetryPolicy:
    section.only("base_seconds", "cap_seconds", "attempts")
    policy = RetryPolicy(
        base_seconds=float(_positive(section, "base_seconds", base.base_seconds, (int, float))),
        cap_seconds=float(_positive(section, "cap_seconds", base.cap_seconds, (int, float))),
        attempts=_positive(section, "attempts", base.attempts),
    )
    if policy.cap_seconds < policy.base_seconds:
        raise section.fail("cap_seconds", "must not be less than base_seconds")
    return policy


def _positive(
    section: _Section,
    setting: str,
    default: Any,
    kind: type | tuple[type, ...] = int,
    at_most: float = math.inf,
) -> Any:
    value = section.get(setting, kind, default)
    if not math.isfinite(value) or value <= 0:
        raise section.fail(setting, f"must be a number more than 0, not {value!r}")
    if value > at_most:
        raise section.fail(setting, f"must be at most {at_most}, not {value!r}")
    return value


def _parse_orders(section: _Section) -> OrdersSettings:
    section.only("table", "key_column", "status_column", "cancel", "complete")
    base = OrdersSettings()
    return OrdersSettings(
        table=_identifier(section, "table", base.table),
        key_column=_identifier(section, "key_column", base.key_column),
        status_column=_identifier(section, "status_column", base.status_column),
        cancel=_status_change(section, "cancel", base.cancel),
        complete=_status_change(section, "complete", base.complete),
    )


def _identifier(section: _Section, setting: str, default: str) -> str:
    value = section.get(setting, str, default)
    if not value or len(value) > 64:
        raise section.fail(setting, "must be a table or column name of 1 to 64 characters")
    return str(value)


def _status_change(section: _Section, setting: str, default: StatusChange) -> StatusChange:
    raw = section.get(setting, dict, None)
    if raw is None:
        return default
    inner = _Section(section.source, f"{section.where} {setting}", raw)
    inner.only("from", "to")
    sources = inner.get("from", list, list(default.sources))
    target = inner.get("to", (int, str), default.target)
    if not sources or not all(_is_status(s) for s in sources):
        raise section.fail(setting, "`from` must be a non-empty list of statuses, e.g. [0]")
    return StatusChange(tuple(sources), target)


def _is_status(value: Any) -> bool:
    return isinstance(value, int | str) and not isinstance(value, bool)


def _parse_routes(source: str, raw: Any, retry: RetryPolicy) -> tuple[Route, ...]:
    if not isinstance(raw, list | tuple) or not raw:
        raise ConfigError(f"{source}: [[routes]]: must be one or more [[routes]] tables")
    routes = tuple(_parse_route(source, number, item, retry) for number, item in enumerate(raw, 1))
    names = [route.name for route in routes]
    for number, name in enumerate(names, 1):
        if names.index(name) != number - 1:
            raise ConfigError(
                f"{source}: [[routes]] #{number}: route {name!r} is already defined "
                f"by #{names.index(name) + 1}; remove it or give it another name"
            )
    return routes


def _parse_route(source: str, number: int, raw: Any, retry: RetryPolicy) -> Route:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: [[routes]] #{number}: must be a table")
    section = _Section(source, f"[[routes]] #{number}", raw)
    pattern_text = section.get("pattern", str, None)
    handler = section.get("handler", str, None)
    if not pattern_text or not handler:
        raise section.fail("pattern" if not pattern_text else "handler", "is required")
    try:
        pattern = Pattern.parse(pattern_text)
    except PatternError as exc:
        raise section.fail("pattern", f"{pattern_text!r}: {exc}") from None
    name = section.get("name", str, pattern_text)
    retry_table = section.get("retry", dict, {})
    retry = _parse_retry(_Section(source, f"[[routes]] #{number} retry", retry_table), retry)
    options = {k: v for k, v in raw.items() if k not in ("pattern", "handler", "name", "retry")}
    return Route(name=name, pattern=pattern, handler=handler, options=options, retry=retry)

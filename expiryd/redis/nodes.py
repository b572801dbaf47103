"""Redis nodes named in a URL of several hosts (`redis+sentinel://`, `redis+cluster://`):
their addresses, and the options every connection to one of them takes."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from redis.connection import parse_url

Address = tuple[str, int]


class NodeUrlError(ValueError):
    """A URL of several hosts that does not parse; the message never quotes a secret."""


def address_of(text: str, default_port: int) -> Address:
    """`host:port`, `host` or `[v6 address]:port`."""
    if text.startswith("["):
        host, _, port = text[1:].partition("]")
        port = port.removeprefix(":")
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    if not host or not (port or str(default_port)).isdigit():
        raise NodeUrlError(f"{text!r} is not a host:port")
    return host, int(port or default_port)


def node_options(tls: bool, userinfo: str, db: int, query: dict[str, str]) -> dict[str, Any]:
    """Credentials and settings as redis-py reads them from a plain URL."""
    at = f"{userinfo}@" if userinfo else ""
    options = parse_url(f"{'rediss' if tls else 'redis'}://{at}127.0.0.1/{db}?{urlencode(query)}")
    for key in ("host", "port", "connection_class"):
        options.pop(key, None)
    if tls:
        options["ssl"] = True
    return options


def normal_address(address: Any) -> Address:
    host, port = address
    return (host.decode() if isinstance(host, bytes) else str(host)), int(port)

"""Redis nodes named in a URL of several hosts (`redis+sentinel://`, `redis+cluster://`):
their addresses, and the options every connection to one of them takes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

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


@dataclass(frozen=True)
class NodesUrl:
    """A URL of several hosts, taken apart: `scheme://[userinfo@]host:port,.../path?query`."""

    tls: bool
    userinfo: str
    addresses: tuple[Address, ...]
    path: str
    query: dict[str, str]

    @classmethod
    def split(cls, url: str, schemes: dict[str, bool], default_port: int, what: str) -> NodesUrl:
        """`schemes`: each scheme taken, and whether it means TLS; `what` the hosts are."""
        scheme, _, rest = url.partition("://")
        if scheme not in schemes:
            raise NodeUrlError(f"scheme must be one of {', '.join(schemes)}")
        parts = urlsplit(f"x://{rest}")
        userinfo, _, hosts = parts.netloc.rpartition("@")
        addresses = tuple(address_of(part, default_port) for part in hosts.split(",") if part)
        if not addresses:
            raise NodeUrlError(f"name at least one {what} as host:port")
        return cls(schemes[scheme], userinfo, addresses, parts.path, dict(parse_qsl(parts.query)))

    def node_options(self, db: int) -> dict[str, Any]:
        return node_options(self.tls, self.userinfo, db, self.query)

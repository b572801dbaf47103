"""Keeping passwords out of everything expiryd prints.

A URL is shown with everything between `://` and the last `@` reduced to the user name,
and with password-like query parameters masked, which hides at least what the parsers
that read it (SQLAlchemy's `make_url`, redis-py's `parse_url`) take for the password,
even when it holds `/`, `#`, `?`, `@` or `%`. Every password a configured URL carries is
also remembered, so that an error message that repeats one (a driver echoing a URL, say)
is scrubbed before it is printed.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, unquote, urlsplit

from redis.connection import parse_url as parse_redis_url
from sqlalchemy.engine import make_url

MASK = "***"
_SECRET_QUERY = re.compile(r"(?i)([?&][a-z_]*(?:pass|pwd|secret|token)[a-z_]*=)[^&#]*")
_MASKED_VALUE = rf"\1{MASK}"
_known: set[str] = set()
_REDIS_SCHEMES = (
    *("redis://", "rediss://", "unix://"),
    *("redis+sentinel://", "rediss+sentinel://", "redis+cluster://", "rediss+cluster://"),
)


def redact_url(url: str) -> str:
    """The URL with any password replaced by ***."""
    scheme, separator, rest = url.partition("://")
    userinfo, at, location = rest.rpartition("@")
    if separator and at and ":" in userinfo:
        url = f"{scheme}://{userinfo.split(':', 1)[0]}:{MASK}@{location}"
    return scrub(_SECRET_QUERY.sub(_MASKED_VALUE, url))


def parsed_password(url: str) -> str | None:
    """The password as the parser of this kind of URL reads it (None for none)."""
    if url.startswith(_REDIS_SCHEMES[3:]):
        # A Sentinel or Cluster URL names several hosts: read its credentials as a plain
        # one's.
        userinfo, at, _ = url.partition("://")[2].rpartition("@")
        password = parse_redis_url(f"redis://{userinfo}{at}127.0.0.1/0").get("password")
    elif url.startswith(_REDIS_SCHEMES):
        password = parse_redis_url(url).get("password")
    else:
        password = make_url(url).password
    return password if isinstance(password, str) else None


def password_misread(url: str) -> bool:
    """Whether the URL's parser takes a different password than the one written before
    the last `@`: an unencoded `@`, `#`, `/` or `?` ended it early, and the rest would be
    read (and shown) as the host. An unparseable URL counts as misread."""
    userinfo = url.partition("://")[2].rpartition("@")[0]
    written = unquote(userinfo.split(":", 1)[1]) if ":" in userinfo else None
    try:
        return parsed_password(url) != written and written is not None
    except Exception:
        return True


def remember(url: str) -> None:
    """Note the passwords `url` carries, as its parser reads them, to scrub them later."""
    _known.update(secret for secret in url_passwords(url) if len(secret) >= 4)


def url_passwords(url: str) -> set[str]:
    """Every password the parser of this kind of URL finds in it, as given and decoded."""
    found: set[str | None] = set()
    try:
        found.add(parsed_password(url))
        if url.startswith(_REDIS_SCHEMES):
            query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
        else:
            query = {k: str(v) for k, v in make_url(url).query.items()}
        found.update(v for k, v in query.items() if _SECRET_QUERY.search(f"?{k}="))
    except Exception:  # an unparseable URL: only the masking above applies
        pass
    userinfo = url.partition("://")[2].rpartition("@")[0]
    if ":" in userinfo:
        found.add(userinfo.split(":", 1)[1])
    return {s for secret in found if secret for s in (secret, unquote(secret))}


def scrub(text: str) -> str:
    """`text` with every remembered password replaced by ***."""
    for secret in _known:
        if secret in text:
            text = text.replace(secret, MASK)
    return text

"""Redis URLs for RedisStore: the cluster schemes, the clients they make, and hiding passwords.

A RedisStore takes one URL.  redis-py's own schemes (``redis://``, ``rediss://``
for TLS, ``unix://``) reach one server; ``redis+cluster://`` and
``rediss+cluster://`` (TLS) reach a Redis Cluster through any of its nodes,
with redis-py's ``RedisCluster`` client.  A cluster has only database 0, so a
cluster URL naming another database is refused.

Passwords live in URLs (``redis://user:secret@host/0``) and must never reach a
log, an error message, a ``repr`` or the command line's output: everything
shown goes through :func:`redact`.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = [
    "CLUSTER_SCHEMES",
    "connect",
    "is_cluster_url",
    "node_url",
    "password_of",
    "redact",
    "redact_text",
]

#: Cluster scheme -> the redis-py scheme of its nodes.
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}

_HIDDEN = "***"
# Query parameters redis-py reads a secret from.
_SECRET_PARAMETERS = frozenset({"password", "ssl_password"})
# Any "scheme://user:password@" inside free text (an exception's message).
_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*):[^@\s]*@", re.IGNORECASE)


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster (``redis+cluster://``, ``rediss+cluster://``)."""
    return urlsplit(url).scheme.lower() in CLUSTER_SCHEMES


def node_url(url: str) -> str:
    """The redis-py URL of a cluster URL's node (same host, port, user, options).

    Raises ``ValueError`` if the URL names a database other than 0.
    """
    parts = urlsplit(url)
    scheme = CLUSTER_SCHEMES[parts.scheme.lower()]
    database = parts.path.strip("/")
    if database not in ("", "0"):
        raise ValueError(
            f"{redact(url)}: a Redis Cluster has only database 0 (drop the '/{database}'); "
            "use RedisStore(namespace=...) to keep several sets of caches apart"
        )
    return urlunsplit((scheme, parts.netloc, "", parts.query, parts.fragment))


def connect(redis_module: Any, url: str, options: dict[str, Any]) -> Any:
    """A redis-py client for ``url``: ``RedisCluster`` for a cluster URL, else ``Redis``."""
    if is_cluster_url(url):
        return redis_module.cluster.RedisCluster.from_url(node_url(url), **options)
    return redis_module.Redis.from_url(url, **options)


def password_of(url: str) -> str | None:
    """The password in ``url``, if any (to hide it wherever it might be quoted)."""
    return urlsplit(url).password


def redact(url: str) -> str:
    """``url`` with its password (and any secret query parameter) replaced by ``***``.

    >>> redact("redis://app:s3cret@cache.example:6379/0")
    'redis://app:***@cache.example:6379/0'
    >>> redact("redis://cache.example/0?password=s3cret&socket_timeout=3")
    'redis://cache.example/0?password=***&socket_timeout=3'
    """
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        netloc = f"{user}{colon}{_HIDDEN if colon else ''}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [
                (key, _HIDDEN if key.lower() in _SECRET_PARAMETERS else value)
                for key, value in pairs
            ],
            safe="*",
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str, secrets: tuple[str | None, ...] = ()) -> str:
    """``text`` (an error message, say) with URL passwords and each of ``secrets`` hidden."""
    text = _USERINFO.sub(rf"\1:{_HIDDEN}@", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, _HIDDEN)
    return text

"""Redis clients from settings, and URL redaction so credentials never reach users' eyes."""

from __future__ import annotations

import re
from functools import lru_cache

import redis

from .errors import BackendUnavailable
from .settings import Settings

_CREDENTIALS = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:@/\s]*)(:(?P<pw>[^@/\s]*))?@"
)


def redact(text: str) -> str:
    """Replace passwords in any URL inside ``text`` with ``***``."""

    def _sub(m: re.Match[str]) -> str:
        user = m.group("user")
        if m.group("pw") is None:
            return f"{m.group('scheme')}{user}@" if user else m.group(0)
        return f"{m.group('scheme')}{user}:***@"

    return _CREDENTIALS.sub(_sub, text)


# A Redis that stops answering (frozen, half-open connection) becomes an error after this
# many seconds instead of a hang; above our longest blocking read (XREAD BLOCK, 5 s).
RESPONSE_TIMEOUT = 60


@lru_cache(maxsize=8)
def client_for(url: str) -> redis.Redis:
    """A shared client (connection pool) per URL."""
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=5,
        socket_timeout=RESPONSE_TIMEOUT,
        socket_keepalive=True,
        health_check_interval=30,
    )


def get_client(settings: Settings) -> redis.Redis:
    return client_for(settings.redis_url)


def ping(settings: Settings) -> None:
    """Fail fast with BackendUnavailable when Redis does not answer."""
    try:
        get_client(settings).ping()
    except redis.RedisError as exc:
        raise BackendUnavailable(
            f"Redis at {redact(settings.redis_url)} is unreachable: {redact(str(exc))}"
        ) from None

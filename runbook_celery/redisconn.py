"""Redis clients from settings; ``redact`` keeps their passwords out of every message."""

from __future__ import annotations

from functools import lru_cache

import redis

from .errors import BackendUnavailable
from .redaction import redact as redact  # re-exported: callers import it from here
from .settings import Settings


@lru_cache(maxsize=8)
def client_for(url: str) -> redis.Redis:
    """A shared client (connection pool) per URL."""
    return redis.Redis.from_url(
        url, socket_connect_timeout=5, socket_keepalive=True, health_check_interval=30
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

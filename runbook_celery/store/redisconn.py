"""Redis clients from settings; ``redact`` keeps their passwords out of every message."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

import redis
from kombu.exceptions import OperationalError
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..core.errors import BackendUnavailable
from ..core.redaction import redact as redact  # re-exported: callers import it from here
from ..core.settings import Settings, keepalive_options, redis_connection_options
from . import RunStore


@lru_cache(maxsize=8)
def client_for(url: str) -> redis.Redis:
    """A shared client (connection pool) per URL; its network timing is settings.py's."""
    return redis.Redis.from_url(url, **redis_connection_options())


@lru_cache(maxsize=8)
def lease_client(url: str, timeout: float) -> redis.Redis:
    """A client for lease renewal: every call answers or fails within ``timeout`` seconds
    (no retries), so a worker cut off from Redis knows it in time to stop its steps."""
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        socket_keepalive=True,
        socket_keepalive_options=keepalive_options(),
        retry=Retry(NoBackoff(), 0),
    )


def get_client(settings: Settings) -> redis.Redis:
    return client_for(settings.redis_url)


def store_for(settings: Settings) -> RunStore:
    """The run store of a client process (API, operator decisions); looked up on this
    module by its callers, so the in-process harness can give them its own."""
    return RunStore(get_client(settings), settings.prefix, settings.retention)


def check_writable(client: redis.Redis, probe_key: str) -> None:
    """Raise the error Redis would give a write now (down, full, read-only), changing nothing.

    LPUSHX on a key that does not exist is a no-op, but Redis refuses it like any write that
    may grow memory when maxmemory is reached under ``noeviction``.
    """
    client.lpushx(probe_key, "")


def ping(settings: Settings) -> None:
    """Fail fast with BackendUnavailable when Redis does not answer."""
    try:
        get_client(settings).ping()
    except redis.RedisError as exc:
        raise BackendUnavailable(
            f"Redis at {redact(settings.redis_url)} is unreachable: {redact(str(exc))}"
        ) from None


# Errors of Redis or the broker that a user fixes outside runbook-celery (exit 3).
BACKEND_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, OperationalError)


def describe_backend_error(exc: BaseException) -> str:
    """What went wrong with Redis or the broker, in a sentence saying what to do; no secrets."""
    text = redact(str(exc)) or type(exc).__name__
    if isinstance(exc, OperationalError):
        return f"the broker is unreachable: {text}"
    if isinstance(exc, redis.AuthenticationError) or text.startswith(("NOAUTH", "WRONGPASS")):
        return f"Redis refused the credentials of RUNBOOK_REDIS_URL: {text}"
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return f"Redis is unreachable: {text}"
    if isinstance(exc, redis.OutOfMemoryError) or "used memory > 'maxmemory'" in text:
        return (
            "Redis is full and refuses writes (maxmemory reached, policy noeviction); "
            f"free memory or raise maxmemory, then try again: {text}"
        )
    if isinstance(exc, redis.ReadOnlyError):
        return f"Redis is a read-only replica; point RUNBOOK_REDIS_URL at the primary: {text}"
    if "MISCONF" in text:
        return f"Redis refuses writes until it can save to disk again: {text}"
    return f"Redis failed: {text}"


@contextmanager
def backend_errors(doing: str) -> Iterator[None]:
    """Turn a Redis or broker failure while ``doing`` something into BackendUnavailable."""
    try:
        yield
    except BACKEND_ERRORS as exc:
        raise BackendUnavailable(f"cannot {doing}: {describe_backend_error(exc)}") from exc

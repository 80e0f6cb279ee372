"""One typed view of configuration, read from ``RUNBOOK_*`` environment variables once."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import lru_cache

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_PREFIX = "runbook"
DEFAULT_OUTPUT_LIMIT = 1024 * 1024  # bytes of $RUNBOOK_OUTPUT per step
DEFAULT_MAX_FILE_BYTES = 2 * 1024 * 1024  # largest workflow file we parse
DEFAULT_VISIBILITY_TIMEOUT = 6 * 3600  # seconds; must exceed the longest step
DEFAULT_RETENTION = 7 * 86400  # seconds a finished run is kept
DEFAULT_LOG_LINES = 10_000  # lines of log kept per step
DEFAULT_STDERR_TAIL_LINES = 20
DEFAULT_LEASE_SECONDS = 30  # a running step refreshes its lease this often x3
DEFAULT_MAX_ATTEMPTS = 5  # deliveries of one step before it fails as worker_lost
DEFAULT_KILL_GRACE = 10.0  # seconds between SIGTERM and SIGKILL of a step
DEFAULT_SHUTDOWN_GRACE = 60.0  # seconds a stopping worker lets running steps finish
DEFAULT_MAX_INSTANCES = 10_000  # instances of one matrix/for_each step


@dataclass(frozen=True)
class Settings:
    """Configuration for clients and workers; build it with ``Settings.from_env``."""

    redis_url: str = DEFAULT_REDIS_URL
    broker_url: str = DEFAULT_REDIS_URL
    prefix: str = DEFAULT_PREFIX
    output_limit: int = DEFAULT_OUTPUT_LIMIT
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    visibility_timeout: int = DEFAULT_VISIBILITY_TIMEOUT
    retention: int = DEFAULT_RETENTION
    log_lines: int = DEFAULT_LOG_LINES
    lease_seconds: int = DEFAULT_LEASE_SECONDS
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    kill_grace: float = DEFAULT_KILL_GRACE
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE
    max_instances: int = DEFAULT_MAX_INSTANCES
    default_queue: str = "runbook"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        e = os.environ if env is None else env
        redis_url = e.get("RUNBOOK_REDIS_URL", DEFAULT_REDIS_URL)
        return cls(
            redis_url=redis_url,
            broker_url=e.get("RUNBOOK_BROKER_URL", redis_url),
            prefix=e.get("RUNBOOK_PREFIX", DEFAULT_PREFIX),
            output_limit=int(e.get("RUNBOOK_OUTPUT_LIMIT", DEFAULT_OUTPUT_LIMIT)),
            max_file_bytes=int(e.get("RUNBOOK_MAX_FILE_BYTES", DEFAULT_MAX_FILE_BYTES)),
            visibility_timeout=int(e.get("RUNBOOK_VISIBILITY_TIMEOUT", DEFAULT_VISIBILITY_TIMEOUT)),
            retention=int(e.get("RUNBOOK_RETENTION", DEFAULT_RETENTION)),
            log_lines=int(e.get("RUNBOOK_LOG_LINES", DEFAULT_LOG_LINES)),
            lease_seconds=int(e.get("RUNBOOK_LEASE_SECONDS", DEFAULT_LEASE_SECONDS)),
            max_attempts=int(e.get("RUNBOOK_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS)),
            kill_grace=float(e.get("RUNBOOK_KILL_GRACE", DEFAULT_KILL_GRACE)),
            shutdown_grace=float(e.get("RUNBOOK_SHUTDOWN_GRACE", DEFAULT_SHUTDOWN_GRACE)),
            max_instances=int(e.get("RUNBOOK_MAX_INSTANCES", DEFAULT_MAX_INSTANCES)),
            default_queue=e.get("RUNBOOK_QUEUE", "runbook"),
        )

    def with_(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings.from_env()


# Connection URLs may carry passwords: steps never see them.
HIDDEN_FROM_STEPS = ("RUNBOOK_REDIS_URL", "RUNBOOK_BROKER_URL")


def worker_environment() -> dict[str, str]:
    """The environment a step inherits from its worker (the only other os.environ read)."""
    env = dict(os.environ)
    for name in HIDDEN_FROM_STEPS:
        env.pop(name, None)
    return env

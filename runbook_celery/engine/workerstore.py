"""The store a worker process uses, made once per process, and its shutdown flag file.

A module of its own below the step task, the result backend (``app``) and the worker hooks,
which all need the same store: none of them imports another for it. Callers look the
functions up on this module (``workerstore.worker_store()``), so the in-process harness
(``runbook_celery.testing``) and tests can put a store of their own in its place.
"""

from __future__ import annotations

import os
import tempfile
from functools import lru_cache

from ..core.settings import Settings, get_settings
from ..store import RunStore
from ..store.redisconn import get_client, lease_client


@lru_cache(maxsize=1)
def worker_store() -> tuple[Settings, RunStore]:
    settings = get_settings()
    return settings, RunStore(get_client(settings), settings.prefix, settings.retention)


@lru_cache(maxsize=1)
def lease_store() -> RunStore:
    """The store as lease renewal sees it: a client that gives up quickly (no retries), so
    that a renewal that cannot reach Redis is known as such well within the lease."""
    settings = get_settings()
    timeout = max(0.25, settings.lease_seconds / 8)
    return RunStore(lease_client(settings.redis_url, timeout), settings.prefix, settings.retention)


def shutdown_flag_path(worker_pid: int) -> str:
    """A file the worker's main process creates when running steps must be handed back."""
    return os.path.join(tempfile.gettempdir(), f"runbook-handback-{worker_pid}")

"""The store's in-memory double: the real ``RunStore`` on an in-memory Redis that runs the
store's own Lua scripts, for tests that need no Redis server and no worker.

    from runbook_celery.store.memory import memory_store

    store = memory_store()
    store.create_run(run_id, snapshot, "sha")
    decision = store.start_step(run_id, "build", token="t", ...)

Like huey's ``MemoryHuey``, it lets engine logic be tested in milliseconds. Unlike it, it is
not a second implementation of the storage in Python: every transition of the store is a
Lua script (``store/lua/``), and a Python copy of each would be a second copy of every
invariant, free to drift from the first. Instead the same scripts run on fakeredis, whose
embedded Lua is 5.1 (lupa), the version Redis embeds; each command, a script included, runs
under one server lock, so a script is atomic as on Redis, and, as on Redis, a script that
fails halfway keeps the writes it made before the error. ``tests/test_lua_contracts.py``
and the ``tests/test_store_*.py`` contract suites run over this double and over real
Redis with the same assertions.

Where the double differs from a Redis server (``tests/test_memory_store.py`` checks each
difference against real Redis, and that the scripts do not depend on it):

* ``cjson.encode`` writes an empty table as ``[]`` (Redis: ``{}``), leaves ``/`` and
  non-ASCII characters as they are (Redis: ``\\/`` and raw UTF-8 bytes) and writes numbers
  in full (Redis: 14 significant digits). The scripts encode one thing, a non-empty list of
  strings that Python decodes to the same list either way.
* ``cjson.decode`` fails on an integer beyond 64 bits (Redis reads it as a double). The
  scripts decode lists of ids and parked Celery messages, which hold none.
* the ``bit``, ``struct`` and ``cmsgpack`` libraries are missing and ``os`` is present;
  reading an undefined global gives ``nil`` (Redis raises). The scripts use none of these
  libraries, and the same suites on real Redis catch a script that reads an undefined
  global.
* error messages differ in their wording (the type, ``redis.ResponseError``, is the same);
  keys expire on the test process's clock; there is no memory limit, replication,
  persistence or kombu broker (what needs one stays tested on real Redis only).

Not checked there, because it is fakeredis's and no script's: at the low end of its range
(2.31) a blocking read (``XREAD BLOCK``, as ``Run.wait`` makes) answers at once with
nothing instead of blocking, so a waiter on the double polls; tests of blocking run on
real Redis.

Needs the ``testing`` extra: ``pip install 'runbook-celery[testing]'``.
"""

from __future__ import annotations

import redis

from .runstore import RunStore

__all__ = ["memory_redis", "memory_store"]

REDIS_VERSION = (7,)  # what the double answers as: the Redis the project is tested on


def memory_redis() -> redis.Redis:
    """A client of a new, empty in-memory Redis server of its own, which runs Lua.

    Each call makes a separate server: two doubles never see each other's keys.
    """
    try:
        import fakeredis  # optional: the ``testing`` extra
    except ImportError:
        raise ImportError(
            "the in-memory store needs fakeredis with Lua: pip install 'runbook-celery[testing]'"
        ) from None
    return fakeredis.FakeRedis(server=fakeredis.FakeServer(version=REDIS_VERSION))


def memory_store(
    prefix: str = "runbook",
    retention: int = 7 * 86400,
    client: redis.Redis | None = None,
) -> RunStore:
    """A ``RunStore`` on ``client``, by default a new in-memory Redis (``memory_redis()``).

    ``Gates(store)`` and anything else built on a store work on it unchanged; reach the
    server itself through ``store.r``.
    """
    return RunStore(client if client is not None else memory_redis(), prefix, retention)

"""What a worker does while Redis is full (``maxmemory`` with ``noeviction``): it waits.

With ``noeviction`` (what we recommend, so that nothing is silently lost) Redis refuses
every write that could use memory, and every write queued in a MULTI transaction, with an
``OOM`` error. Before this module that error reached Celery's consumer from the broker's
acknowledgement (a MULTI in kombu's Redis transport) and the worker died with
``Unrecoverable error: OutOfMemoryError``.

Now, while Redis refuses writes for lack of memory:

* the worker's consumer pauses: it retries the acknowledgement or the bookkeeping of the
  message it holds and takes no new message, so nothing is taken off a queue that cannot
  be recorded;
* a step that has run keeps its result and retries recording it until Redis accepts it: a
  finished step is neither lost nor run again; a step that has not started yet waits to be
  claimed;
* a running step keeps its lease and its watch (the renewal's first write is a PEXPIRE,
  which a full Redis allows; see ``store/lua/renew.lua``), so it runs on, and no other
  worker takes it over once memory is freed;
* everything resumes by itself once memory is freed, and the worker log says when it
  starts and stops waiting.

Waiting rather than failing: recording a failure is a write too, which a full Redis refuses
just the same, and a step's work (a deploy, a migration) must not be thrown away or done
twice because the store was full for a while.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

import redis
from celery.worker import state
from kombu import transport as kombu_transport
from kombu.transport import redis as kombu_redis

from . import workerstore

log = logging.getLogger("runbook_celery.worker")

FIRST_DELAY = 0.25  # seconds before the first retry
MAX_DELAY = 5.0  # retries back off to this interval
FULL_RATIO = 0.98  # used_memory / maxmemory from which `full_description` calls Redis full

_T = TypeVar("_T")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether Redis refused a write because ``maxmemory`` is reached (also in MULTI)."""
    return isinstance(exc, redis.exceptions.OutOfMemoryError)


def wait_while_full(
    call: Callable[[], _T],
    what: str,
    *,
    while_waiting: Callable[[], None] | None = None,
    give_up: Callable[[], bool] | None = None,
) -> _T:
    """``call()``, retried for as long as Redis refuses it for lack of memory.

    ``while_waiting`` runs before each retry (e.g. to keep a lease); when ``give_up()`` says
    so the refusal is raised after all (the worker is shutting down).
    """
    delay = FIRST_DELAY
    since: float | None = None
    while True:
        try:
            result = call()
        except redis.RedisError as exc:
            if not is_out_of_memory(exc) or (give_up is not None and give_up()):
                raise
            if since is None:
                since = time.monotonic()
                log.warning(
                    "Redis is full (maxmemory reached, noeviction): %s waits until memory "
                    "is freed (raise maxmemory or delete old data); the worker goes on",
                    what,
                )
            if while_waiting is not None:
                with contextlib.suppress(redis.RedisError):  # best effort; retried next time
                    while_waiting()
            time.sleep(delay)
            delay = min(MAX_DELAY, delay * 2)
            continue
        if since is not None:
            log.warning(
                "Redis accepts writes again: %s went through after %.1fs",
                what,
                time.monotonic() - since,
            )
        return result


def full_description(client: redis.Redis) -> str | None:
    """A sentence saying Redis is full, or None (also when INFO is not allowed)."""
    try:
        info = client.info("memory")
    except redis.RedisError:
        return None
    used, limit = int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))
    if not limit or used < limit * FULL_RATIO:
        return None
    return (
        f"Redis is full ({_mb(used)} used of maxmemory {_mb(limit)}, policy "
        f"{info.get('maxmemory_policy', '?')}): steps cannot record their progress until "
        "memory is freed"
    )


def _mb(n: int) -> str:
    return f"{n / 1048576:.1f} MiB"


def worker_stopping() -> bool:
    """``give_up`` for waits in a worker: its shutdown has begun, stop waiting.

    In the worker's main process Celery sets a flag on SIGTERM/SIGINT; in a pool process
    the hand-back flag file of the worker (its parent) is raised after the shutdown grace.
    """
    # celery-types declares both None; Celery sets them to the exit code on shutdown
    should_stop = cast("int | None", state.should_stop)
    should_terminate = cast("int | None", state.should_terminate)
    if should_stop or should_terminate:
        return True
    return os.path.exists(workerstore.shutdown_flag_path(os.getppid()))


class QoS(kombu_redis.QoS):
    """kombu's Redis acknowledgement emulation, which waits while Redis is full.

    Noting a delivered message as unacknowledged, acknowledging it and putting it back are
    MULTI transactions, all refused by a full Redis. The consumer thread waits here, so the
    worker takes no new message meanwhile and its running steps go on in their processes.
    """

    def append(self, message: Any, delivery_tag: Any) -> None:
        wait_while_full(
            lambda: super(QoS, self).append(message, delivery_tag),
            f"noting delivery {delivery_tag} as unacknowledged",
            give_up=worker_stopping,
        )

    def ack(self, delivery_tag: Any) -> None:
        wait_while_full(
            lambda: super(QoS, self).ack(delivery_tag),
            f"acknowledging delivery {delivery_tag}",
            give_up=worker_stopping,
        )

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        wait_while_full(
            lambda: super(QoS, self).reject(delivery_tag, requeue=requeue),
            f"rejecting delivery {delivery_tag}",
            give_up=worker_stopping,
        )

    def restore_visible(self, *args: Any, **kwargs: Any) -> None:
        """Put back messages unacknowledged for longer than the visibility timeout.

        A periodic chore of the consumer; while Redis is full it cannot take its lock, and
        it simply runs again on its next interval.
        """
        with contextlib.suppress(redis.exceptions.OutOfMemoryError):
            super().restore_visible(*args, **kwargs)


class Channel(kombu_redis.Channel):
    QoS = QoS


class Transport(kombu_redis.Transport):
    """The Redis broker transport with ``QoS`` above (``broker_transport`` in app.py)."""

    Channel = Channel


TRANSPORT = f"{__name__}:Transport"


def use_patient_redis_transport() -> None:
    """Make ``redis://`` and ``rediss://`` broker URLs use ``Transport`` above.

    Through kombu's scheme aliases rather than Celery's ``broker_transport``: with the
    latter, the connection's URL (the worker banner, Flower's broker page) would carry the
    class path as its scheme, and ``rediss`` would lose its ``s``. Called before the app
    makes any connection, i.e. before kombu resolves (and caches) the alias.
    """
    kombu_transport.TRANSPORT_ALIASES.update(redis=TRANSPORT, rediss=TRANSPORT)

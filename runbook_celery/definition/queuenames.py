"""Which Celery queue names are safe: a queue must never share a Redis key with anything else.

On the Redis broker a queue ``Q`` is the list ``Q`` plus one list per priority, ``Q:1`` to
``Q:9`` (kombu's ``sep`` is ``:`` in app.py), in the same database as kombu's bookkeeping,
Celery's results and our own keys. A queue named like one of those keys makes every worker
that touches it fail (``queue: unacked`` turned kombu's ``unacked`` hash into a list: WRONGTYPE
in every worker, for good).

So a queue name:

* contains no ``:``. Every key of ours is ``PREFIX:...``, and every priority list is
  ``NAME:N``; without ``:`` a queue name can equal neither, whatever ``RUNBOOK_PREFIX`` is
  (so nothing here needs the prefix). kombu also cuts a popped key at its last ``:`` to find
  the queue, so a message of top priority on a queue ``a:b`` was delivered to ``a``: "no
  consumers", requeued, popped again, forever.
* starts with a letter or digit (kombu's own keys start with ``_kombu``);
* is not one of kombu's or Celery's key names below (a test builds them from the libraries).

Pure: used by the definition model, the worker and the settings alike.
"""

from __future__ import annotations

import re

QUEUE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
_QUEUE_RE = re.compile(QUEUE_PATTERN)

# kombu's Redis transport (Channel.unacked_key, unacked_index_key, unacked_mutex_key) and
# Celery's event exchange.
RESERVED_NAMES = frozenset({"unacked", "unacked_index", "unacked_mutex", "celeryev"})
RESERVED_PREFIXES = (
    "_kombu",  # _kombu.binding.*, _kombu.binding_deadlines, _kombu.binding_permanent.*
    "celeryev.",  # event receivers' queues (Flower, `celery events`)
    "celery-task-meta-",  # task results
    "celery-taskset-meta-",  # group results and chord counters (.j, .t, ...)
    "chord-unlock-",  # chord bookkeeping of the result backend
)
RESERVED_SUFFIXES = (".pidbox",)  # remote control: NODE.celery.pidbox, ID.reply.celery.pidbox


def queue_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a queue, or None when it is safe."""
    shown = repr(name if len(name) <= 60 else name[:57] + "...")
    if name in RESERVED_NAMES or name.startswith(RESERVED_PREFIXES):
        return f"{shown} is a Redis key of the broker (kombu/Celery); choose another queue name"
    if name.endswith(RESERVED_SUFFIXES):
        return f"{shown} is a Celery remote-control queue; choose another queue name"
    if ":" in name:
        return (
            f"{shown} contains ':', which separates a queue from its priority lists on "
            "Redis; use letters, digits, '_', '.' and '-'"
        )
    if not _QUEUE_RE.match(name):
        return (
            f"{shown} is not a queue name: start with a letter or digit, then letters, digits, "
            "'_', '.' and '-' (at most 128 characters)"
        )
    return None


def queue_names_problem(names: str) -> str | None:
    """The first problem in a comma-separated list of queues (a worker's ``-Q``), or None."""
    listed = [n.strip() for n in names.split(",")]
    for name in listed:
        if problem := queue_name_problem(name):
            return problem
    return None

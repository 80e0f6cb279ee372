"""Run and step state plus the event log, in Redis (Redis only: this package never
imports Celery or kombu).

Each state transition of a step or run is one Lua script (``lua/*.lua``, loaded by
``scripts``), so steps of one run finishing at the same moment on several workers never
lose an update, and the transition, its event and the run's bookkeeping (remaining
steps, final status) happen together or not at all. Reads, the lease-index upkeep that
needs no check (``drop_lease_entry`` without a cutoff, ``rejoin``) and ``skip_run`` (a
MULTI transaction on a run no worker has seen) are plain commands.

Parts: ``runs`` (create, read, expire), ``transitions`` (claim, finish, retry, hand back,
release), ``cancel``, ``leases`` (renew, watch, hand on), ``fanout`` (instances, fan-in,
fail-over), ``eventlog`` (reading the streams), ``gates`` (pause/resume, approvals,
decisions, concurrency groups); ``runstore`` puts them together as ``RunStore``.
"""

from __future__ import annotations

from .cancel import CANCEL_CHUNK
from .codec import _decode as _decode
from .codec import _describe as _describe
from .codec import _epoch as _epoch
from .codec import _s as _s
from .codec import now_iso
from .records import ChainLink, Decision, FinishOutcome, Outcome, StartDecision, Successor
from .runstore import RunStore
from .scripts import GLOBAL_EVENTS_MAXLEN, RUN_EVENTS_MAXLEN, prelude

# the shared Lua helpers with their constants, as gates.py used to import them
_LUA_EMIT = prelude()

__all__ = [
    "CANCEL_CHUNK",
    "GLOBAL_EVENTS_MAXLEN",
    "RUN_EVENTS_MAXLEN",
    "ChainLink",
    "Decision",
    "FinishOutcome",
    "Outcome",
    "RunStore",
    "StartDecision",
    "Successor",
    "now_iso",
]

"""``RunStore``: the whole store as one object, assembled from its parts (one per concern)."""

from __future__ import annotations

from .cancel import Cancelling
from .eventlog import EventLog
from .fanout import FanOut
from .leases import Leases
from .runs import RunRecords
from .transitions import Transitions


class RunStore(Cancelling, RunRecords, EventLog, Transitions, Leases, FanOut):
    """Reads and writes runs; one instance per Redis client and key prefix."""

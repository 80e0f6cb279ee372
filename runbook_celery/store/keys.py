"""Every Redis key name runbook-celery uses, derived from one configurable prefix."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    """Key names under ``prefix``; a test or a tenant picks its own prefix."""

    prefix: str = "runbook"

    @property
    def runs_index(self) -> str:
        """Sorted set of run ids scored by creation time."""
        return f"{self.prefix}:runs"

    @property
    def leases(self) -> str:
        """Sorted set of running steps (``run|step``) scored by lease expiry (epoch seconds)."""
        return f"{self.prefix}:leases"

    @property
    def children_waiting(self) -> str:
        """Sorted set of steps waiting for their child run (``run|step``, uses:) scored by
        when they parked: the reconciler's safety net for a lost hand-off (childruns.py)."""
        return f"{self.prefix}:children_waiting"

    @property
    def global_events(self) -> str:
        """Stream of every run's events but a step's own path (``RUN_STREAM_ONLY_EVENTS``),
        which only the run's stream holds; globalevents.py merges the two for readers."""
        return f"{self.prefix}:events"

    @property
    def event_runs(self) -> str:
        """Sorted set of the runs whose streams a reader of the global stream merges in,
        scored by when each ended (epoch ms, Redis' clock; ``+inf`` while it goes on)."""
        return f"{self.prefix}:event_runs"

    @property
    def dead_letters(self) -> str:
        """Capped list of broker messages workers refused (newest first; deadletter.py)."""
        return f"{self.prefix}:deadletters"

    def run(self, run_id: str) -> str:
        return f"{self.prefix}:run:{run_id}"

    def run_events(self, run_id: str) -> str:
        return f"{self.prefix}:run:{run_id}:events"

    def run_ended(self, run_id: str) -> str:
        """Stream holding one entry, written when the run ends: ``Run.wait`` blocks on it,
        so a waiter wakes once per run instead of once per event."""
        return f"{self.prefix}:run:{run_id}:end"

    def step(self, run_id: str, step_id: str) -> str:
        return f"{self.prefix}:run:{run_id}:step:{step_id}"

    def lease(self, run_id: str, step_id: str) -> str:
        return f"{self.prefix}:run:{run_id}:lease:{step_id}"

    def arrived(self, run_id: str, step_id: str) -> str:
        """Set of needs of ``step_id`` that have finished (dynamic dispatch join)."""
        return f"{self.prefix}:run:{run_id}:arrived:{step_id}"

    def logs(self, run_id: str, step_id: str) -> str:
        return f"{self.prefix}:run:{run_id}:logs:{step_id}"

    def ended_instances(self, run_id: str, step_id: str) -> str:
        """Set of the instances of fanned-out ``step_id`` that have ended (the fan-in join)."""
        return f"{self.prefix}:run:{run_id}:ended:{step_id}"

    def cgroup(self, group: str) -> str:
        """Sorted set of the active runs of a concurrency group.

        The group's value comes from params (``deploy-${{ params.env }}``), so it is
        digested: no value, whatever its characters, can name another key (``env=prod:queue``
        once made one group's active set the queue of another).
        """
        digest = hashlib.sha256(group.encode()).hexdigest()
        return f"{self.prefix}:cgroup:{digest}"

    def cgroup_queue(self, group: str) -> str:
        """List of the queued runs of a concurrency group, oldest first."""
        return f"{self.cgroup(group)}:queue"

    def transition(self, run_id: str, step_id: str) -> list[str]:
        """The KEYS every step-transition Lua script starts with, in this order."""
        return [
            self.run(run_id),
            self.step(run_id, step_id),
            self.lease(run_id, step_id),
            self.run_events(run_id),
            self.global_events,
        ]

    def run_keys(self, run_id: str, step_ids: list[str]) -> list[str]:
        """Every key belonging to one run (for expiry and cleanup)."""
        keys = [self.run(run_id), self.run_events(run_id), self.run_ended(run_id)]
        for sid in step_ids:
            keys += [
                self.step(run_id, sid),
                self.lease(run_id, sid),
                self.arrived(run_id, sid),
                self.logs(run_id, sid),
                self.ended_instances(run_id, sid),
            ]
        return keys

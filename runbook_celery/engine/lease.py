"""Keeping a running step's lease, and fencing the step when its lease is lost.

A delivery that claimed a step holds it (the step records the delivery's token and its
attempt number, the fencing token) and keeps a lease in Redis (``RUNBOOK_LEASE_SECONDS``,
measured by Redis' clock). Another delivery may take the step over only once that lease
has expired. The holder renews the lease from the claim until its result is recorded,
not only while Bash runs:

* renewal is a compare-and-set on (token, attempt) (``RunStore.refresh_lease``): it never
  takes a lease another delivery holds. When it fails because the step has moved on, the
  step's process group is killed at once and the delivery records nothing;
* every ``REFRESH_EVERY`` x lease it renews, on a client that answers or fails within
  lease/8; once no renewal has succeeded for ``SOFT_FENCE`` x lease (Redis unreachable, a
  partition, a stuck connection), the step is stopped (SIGTERM, at most lease/8 later),
  whether or not Celery noticed a connection loss;
* at ``HARD_FENCE`` x lease without a renewal, the guardian of the pool process (another
  process, so this holds even when the pool process itself is stopped or paused) kills the
  process group (SIGKILL).

All three are measured from the moment the last successful renewal (or the claim) was
*sent*, on the worker's CLOCK_BOOTTIME; Redis measures the lease from when it *applied* it.
So the step's processes are dead before another delivery can start it, as long as the
worker's clock does not run more than ``1 - HARD_FENCE`` (25%) slower than Redis' clock.
"""

from __future__ import annotations

import logging
import signal
import threading
import time

import redis

from ..store import RunStore
from .guardian import GUARDIAN
from .stepprocess import signal_step

log = logging.getLogger("runbook_celery.worker")

REFRESH_EVERY = 0.25  # of the lease: how often the holder renews it
SOFT_FENCE = 0.5  # of the lease without a renewal: SIGTERM the step's process group
HARD_FENCE = 0.75  # of the lease without a renewal: the guardian SIGKILLs the group

SUPERSEDED = "superseded"  # another delivery started the step (or it ended meanwhile)
UNREACHABLE = "unreachable"  # the lease could not be renewed in time


def boottime() -> float:
    """The worker's clock for fencing: monotonic, and it keeps counting across suspend."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


class LeaseKeeper:
    """Renews one delivery's lease in a thread from its claim until its result is recorded."""

    def __init__(
        self,
        store: RunStore,
        run_id: str,
        step_id: str,
        *,
        token: str,
        attempt: int,
        lease_seconds: float,
        claimed_at: float,
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.step_id = step_id
        self.token = token
        self.attempt = attempt
        self.lease = float(lease_seconds)
        self.last_ok = claimed_at  # boottime when the claim (or last renewal) was sent
        self.lost: str | None = None
        self.cancel_requested = False
        self.last_error = "no answer"
        self.pgid: int | None = None
        self._pushed = 0.0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._loop, name=f"runbook-lease-{step_id}", daemon=True
        )

    def start(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        """The result is recorded (or the delivery ends): stop renewing."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.lease)

    def attach(self, pgid: int) -> None:
        """The step's Bash runs as process group ``pgid``: fence it from now on.

        Called by ``run_bash`` in the thread that supervises Bash, as ``push_deadline``
        is (from the step's tick): the guardian hears about the group only while it is
        registered, never after ``run_bash`` released it (its id may be reused).
        """
        with self._lock:
            self.pgid = pgid
            if self.lost is not None:
                self._kill(signal.SIGKILL)
        self.push_deadline()

    def push_deadline(self) -> None:
        """Move the guardian's kill time to the hard fence of the last renewal."""
        with self._lock:
            pgid, at = self.pgid, self.last_ok + HARD_FENCE * self.lease
        if pgid is not None and at != self._pushed:
            self._pushed = at
            GUARDIAN.deadline(pgid, at)

    def detach(self) -> None:
        """Bash is over (its group killed and released): never signal that group again."""
        with self._lock:
            self.pgid = None

    def expired(self) -> bool:
        """Whether the hard fence has passed: the step's processes may have been killed."""
        return boottime() - self.last_ok >= HARD_FENCE * self.lease

    def renew(self) -> None:
        """One renewal (the thread calls this every ``REFRESH_EVERY`` x lease)."""
        sent = boottime()
        try:
            holder, cancel = self.store.refresh_lease(
                self.run_id, self.step_id, self.token, self.attempt, int(self.lease)
            )
        except redis.RedisError as exc:
            self.last_error = f"{exc.__class__.__name__}: {exc}"
            return  # the loop stops the step once the soft fence has passed
        if not holder:
            self._fence(SUPERSEDED, "another delivery holds the step now")
            return
        self.cancel_requested = cancel
        with self._lock:
            if self.lost is None:
                self.last_ok = max(self.last_ok, sent)

    def _loop(self) -> None:
        """Renew every ``REFRESH_EVERY`` x lease; wake at the soft fence too, so the step is
        stopped on time (at most one renewal timeout, lease/8, late) when renewals fail."""
        every = max(0.2, REFRESH_EVERY * self.lease)
        next_renewal = boottime() + every
        while self.lost is None:
            soft = self.last_ok + SOFT_FENCE * self.lease
            if self._stop.wait(max(0.0, min(next_renewal, soft) - boottime())):
                return
            if boottime() >= next_renewal:  # renew first: a renewal due now may succeed
                next_renewal = boottime() + every
                self.renew()
            late = boottime() - self.last_ok
            if self.lost is None and late >= SOFT_FENCE * self.lease:
                self._fence(UNREACHABLE, f"lease not renewed for {late:.1f}s ({self.last_error})")
                return

    def _fence(self, why: str, detail: str) -> None:
        with self._lock:
            if self.lost is not None:
                return
            self.lost = why
            log.warning(
                "step %s of run %s (attempt %s) lost its lease: %s; stopping it",
                self.step_id,
                self.run_id,
                self.attempt,
                detail,
            )
            # superseded: another copy may already run, so no grace; unreachable: SIGTERM
            # now, and the guardian's SIGKILL still comes at the hard fence
            self._kill(signal.SIGKILL if why == SUPERSEDED else signal.SIGTERM)

    def _kill(self, sig: int) -> None:
        if self.pgid is not None:
            signal_step(self.pgid, sig)  # SIGKILL: its cgroup too, if it has one

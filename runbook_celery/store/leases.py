"""Leases and the lease index: renew, watch, hand on, find the expired."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .base import StoreBase
from .codec import _s
from .records import Successor


class Leases(StoreBase):
    def refresh_lease(
        self, run_id: str, step_id: str, token: str, attempt: int, seconds: int
    ) -> tuple[bool, bool]:
        """RENEW: extend our lease; returns (still the holder?, cancel requested?).

        A compare-and-set on (token, attempt): False once another delivery has started the
        step (or it ended), and then this delivery must stop its step and record nothing.
        """
        k = self.keys
        res = self._refresh(
            keys=[k.step(run_id, step_id), k.lease(run_id, step_id), k.leases, k.run(run_id)],
            args=[token, attempt, seconds, f"{run_id}|{step_id}"],
        )
        return int(res[0]) == 1, _s(res[1]) == "1"

    def expired_leases(
        self, grace: float = 0.0, before: float | None = None
    ) -> list[tuple[str, str]]:
        """Watched steps whose lease ran out: their worker is gone (or hung), or their
        message was lost before the step started. ``before``: the cutoff (epoch seconds,
        by Redis' clock, see ``server_time``)."""
        cutoff = (self.server_time() if before is None else before) - grace
        members = self.r.zrangebyscore(self.keys.leases, "-inf", cutoff)
        out = []
        for m in members:
            run_id, _, step_id = _s(m).partition("|")
            out.append((run_id, step_id))
        return out

    def server_time(self) -> float:
        """Redis' clock (epoch seconds): leases and watches are scored by it."""
        sec, usec = self.r.time()
        return float(sec) + usec / 1_000_000

    def watch_steps(
        self, members: Iterable[str], seconds: float, *, only_existing: bool = False
    ) -> None:
        """Watch ``run|step`` entries for ``seconds`` more (the lease index, as a running
        step's lease does); ``only_existing``: extend entries, never create one."""
        members = list(members)
        if members:
            flag = "XX" if only_existing else ""
            self._watch(keys=[self.keys.leases], args=[seconds, flag, *members])

    def hand_on(
        self,
        run_id: str,
        step_id: str,
        successors: Iterable[Successor],
        seconds: float,
        result: tuple[bytes | str, Any, int | None] | None = None,
        ended: Iterable[str] = (),
    ) -> None:
        """HAND ON: stop watching a step that has handed on; watch its ready successors.

        ``result``: (key, value, expires) of the Celery result to store in the same script.
        ``ended``: steps of the same run that hand on with this one (their transitions
        were made by this step's task: a fanned-out step joined by its last instance).
        """
        keys, args = self.hand_on_arguments(run_id, step_id, successors, seconds, ended)
        if result is None:
            self._hand_on(keys=keys, args=args)
            return
        key, value, expires = result
        self._store_result(keys=[key, *keys], args=[value, expires or 0, *args])

    def drop_lease_entry(
        self, run_id: str, step_id: str, expired_before: float | None = None
    ) -> None:
        """Stop watching a step; with ``expired_before``, only if nobody renewed the entry
        since it was found expired (a new delivery of the step watches it again)."""
        member = f"{run_id}|{step_id}"
        if expired_before is None:
            self.r.zrem(self.keys.leases, member)
            return
        self._drop_expired(keys=[self.keys.leases], args=[member, expired_before])

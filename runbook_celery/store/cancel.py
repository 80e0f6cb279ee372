"""Cancelling a run: the request, then its steps in chunks, then its fanned-out steps."""

from __future__ import annotations

import json
from collections.abc import Iterable

from ..core.errors import RunNotFound
from .codec import _decode, _s, now_iso
from .runs import RunRecords

CANCEL_CHUNK = 500  # steps per cancel script: each holds Redis for a few milliseconds


class Cancelling(RunRecords):
    """Built on the run records: a cancel reads the run's steps and their instances."""

    def cancel_run(
        self,
        run_id: str,
        reason: str = "cancelled",
        keep: Iterable[str] = (),
        by: str | None = None,
    ) -> tuple[int, str | None]:
        """Ask a run to stop: pending steps are cancelled now, running ones stop themselves.

        ``keep``: steps (and their instances) that still run after a cancel, unless the
        run still waits for its concurrency group's slot (queued): then none is kept, as
        none of its steps ran and running them would exceed the group's limit (the
        request and that reading are one transition). A fanned-out step whose instances
        have all ended is cancelled now, not when its fan-in comes.
        ``by``: who asked (the run's ``cancelled_by`` and the ``by`` of its cancelling event).
        Returns (steps cancelled now, final run status if this ended the run).
        """
        k = self.keys
        run = _decode(self.r.hgetall(k.run(run_id)))
        if not run:
            raise RunNotFound(run_id)
        workflow = run.get("workflow", "")
        head = [k.run(run_id), k.run_events(run_id), k.global_events]
        args = [run_id, now_iso(), workflow, reason]
        begun = [_s(x) for x in self._cancel_begin(keys=head, args=[*args, by or ""])]
        if begun[0] == "missing":
            raise RunNotFound(run_id)
        self.last_admitted = []
        if begun[0] == "finished":
            return 0, begun[1]
        keep = set() if begun[1:] == ["1"] else set(keep)
        fanned = self._instances_by_parent(run_id, json.loads(run.get("steps", "[]")))
        ids = [s for s in json.loads(run.get("steps", "[]")) if s not in keep]
        for parent, instances in fanned.items():
            if parent not in keep:
                ids += instances
        cancelled, final = self._cancel_chunks(run_id, head, args, ids)
        parents = [p for p in fanned if p not in keep]
        if parents and not final:
            keys = list(head)
            for parent in parents:
                keys += [k.step(run_id, parent), k.ended_instances(run_id, parent)]
            res = [_s(x) for x in self._cancel_fanned(keys=keys, args=[*args, *parents])]
            cancelled += max(0, int(res[0]))
            final = res[1]
            self.last_admitted += res[2:]
        # a run that ended here had its keys' expiry set by the same script (finalize)
        return cancelled, (final or None)

    def _cancel_chunks(
        self, run_id: str, head: list[str], args: list[str], ids: list[str]
    ) -> tuple[int, str]:
        """Cancel the steps ``ids`` in chunks of CANCEL_CHUNK (one script call each), until
        one ends the run: (steps cancelled, the run's final status or "")."""
        k = self.keys
        cancelled, final = 0, ""
        for start in range(0, len(ids), CANCEL_CHUNK):
            chunk = ids[start : start + CANCEL_CHUNK]
            keys = list(head)
            for sid in chunk:
                owner = sid.rsplit("[", 1)[0]
                keys += [k.step(run_id, sid), k.ended_instances(run_id, owner)]
            res = [_s(x) for x in self._cancel_steps(keys=keys, args=[*args, *chunk])]
            if int(res[0]) < 0:
                raise RunNotFound(run_id)
            cancelled += int(res[0])
            final = res[1]
            self.last_admitted += res[2:]
            if final:
                break
        return cancelled, final

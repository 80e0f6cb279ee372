"""Fan-out and joins: instances of a step, a fan-in due, a canvas run failing over."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from redis.typing import EncodableT

from .base import StoreBase
from .codec import _s


class FanOut(StoreBase):
    def add_instances(
        self,
        run_id: str,
        parent: str,
        values: list[dict[str, Any]],
        window: int | None = None,
        watch_seconds: float | None = None,
    ) -> list[str]:
        """Record the instances of a fanned-out step (idempotent); returns their ids.

        ``window``: instances sent at once, each ending one sending the next of its lane
        (``instance_ended``); default all. ``watch_seconds``: watch the first window from
        here (recovery.py), as the caller sends them.
        """
        k = self.keys
        ids = [f"{parent}[{i}]" for i in range(len(values))]
        keys = [k.run(run_id), k.step(run_id, parent), *(k.step(run_id, i) for i in ids)]
        args: list[EncodableT] = [
            json.dumps(ids),
            window or len(ids),
            *(json.dumps(v) for v in values),
        ]
        args.append("" if watch_seconds is None else watch_seconds)
        self._add_instances(keys=keys, args=args)
        raw = self.r.hget(k.step(run_id, parent), "instances")
        return json.loads(raw) if raw else ids

    def instance_ended(
        self, run_id: str, instance_id: str, watch_seconds: float | None = None
    ) -> tuple[str | None, bool]:
        """An instance has ended: (the next instance of its lane to send, fan-in due?).

        ``watch_seconds``: what becomes due is watched from here (recovery.py).
        """
        parent, _, rest = instance_id.rpartition("[")
        index = rest.rstrip("]")
        k = self.keys
        keys = [k.run(run_id), k.step(run_id, parent), k.ended_instances(run_id, parent)]
        args = [instance_id, index, parent, "" if watch_seconds is None else watch_seconds]
        nxt, join = (int(x) for x in self._instance_ended(keys=keys, args=args))
        return (f"{parent}[{nxt}]" if nxt >= 0 else None), bool(join)

    def keep_continuation(self, run_id: str, step_id: str, message: Mapping[str, Any]) -> None:
        """Keep the join message that continues a canvas after a fanned-out step.

        Written by the step's delivery before any instance exists (so before any can end),
        and read when the join is due (``continuation``): not a state change, like a parked
        message; it expires with the step's hash. A redelivery writes the same message.
        """
        self.r.hset(self.keys.step(run_id, step_id), "continuation", json.dumps(message))

    def continuation(self, run_id: str, step_id: str) -> dict[str, Any] | None:
        """The join message kept for a fanned-out step of a canvas run, if any."""
        raw = self.r.hget(self.keys.step(run_id, step_id), "continuation")
        return json.loads(raw) if raw else None

    def instance_values(self, run_id: str, step_id: str) -> dict[str, Any]:
        raw = self.r.hget(self.keys.step(run_id, step_id), "values")
        return json.loads(raw) if raw else {}

    def fail_over_to_dynamic(
        self, run_id: str, children: Mapping[str, list[str]], lease_seconds: float = 30
    ) -> list[str]:
        """A canvas run lost a message: continue it by dynamic dispatch from its record.

        Every finished step joins its children (as dynamic steps do), so the steps whose
        needs have all finished and that are still pending can be published; parts of the
        canvas still in flight are absorbed by the steps' claims. One script reads the
        statuses and switches the mode, so a step finishing at the same moment is either
        seen finished here (and joined) or sees the dynamic mode in its own transition
        (and joins itself), never neither. The steps returned are watched from here (their
        messages, published by the caller, may be lost like any other).
        """
        k = self.keys
        steps = list(children)
        keys = [
            k.run(run_id),
            *(k.step(run_id, s) for s in steps),
            *(k.arrived(run_id, s) for s in steps),
        ]
        index = {s: i for i, s in enumerate(steps)}
        kids = [[index[c] + 1 for c in children[s]] for s in steps]
        res = self._fail_over(keys=keys, args=[json.dumps(kids), *steps, lease_seconds])
        return [steps[int(i) - 1] for i in res]

    def rejoin(self, run_id: str, step_id: str, children: Mapping[str, int]) -> list[str]:
        """Redo a finished step's joins (idempotent); children ready and still pending."""
        if not children:
            return []
        pipe = self.r.pipeline(transaction=False)
        for child in children:
            pipe.sadd(self.keys.arrived(run_id, child), step_id)
            pipe.scard(self.keys.arrived(run_id, child))
            pipe.hget(self.keys.step(run_id, child), "status")
        res = pipe.execute()
        ready = []
        for i, (child, count) in enumerate(children.items()):
            card, status = res[3 * i + 1], _s(res[3 * i + 2])
            if card >= count and status in (None, "pending"):
                ready.append(child)
        return ready

"""What the store's transitions answer: typed replies built from a script's return value."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .codec import _s


@dataclass(frozen=True)
class StartDecision:
    """What the step task should do, as decided atomically by the store."""

    action: str  # start | done | unknown | busy | blocked | exhausted | cancelled | park(ed)
    attempt: int = 0
    need_outputs: dict[str, dict[str, str]] | None = None
    status: str | None = None  # for done / blocked / park (the reason)
    blocked_by: str | None = None
    env: dict[str, str] | None = None  # environment set by an operator's retry decision
    mode: str | None = None  # the run's dispatch mode now (a canvas run may fail over)
    run_status: str | None = None  # the run's outcome so far, at the claim (run.status)

    @classmethod
    def from_reply(
        cls, res: list[Any], needs: Sequence[str], output_steps: Sequence[str]
    ) -> StartDecision:
        """Read claim.lua's reply (see its header)."""
        action = res[0]
        if action == "start":
            outs = {n: json.loads(raw) for n, raw in zip(output_steps, res[5:], strict=True)}
            env = json.loads(res[2]) if res[2] else {}
            return cls(
                "start",
                attempt=int(res[1]),
                need_outputs=outs,
                env=env,
                mode=res[3] or None,
                run_status=res[4] or None,
            )
        if action == "done":
            return cls("done", status=res[1])
        if action == "blocked":
            return cls("blocked", blocked_by=needs[int(res[1]) - 1], status=res[2])
        if action == "exhausted":
            return cls("exhausted", attempt=int(res[2]), status=res[1])
        if action in ("cancelled", "park", "parked"):
            return cls(action, status=res[1])
        return cls(action)


@dataclass(frozen=True)
class FinishOutcome:
    duplicate: bool
    remaining: int = 0
    run_status: str | None = None  # set when this transition ended the run
    ready: tuple[str, ...] = ()
    admitted: tuple[str, ...] = ()  # queued runs of the same concurrency group now allowed
    superseded: bool = False  # refused: another delivery holds (or finished) the step
    unparked: tuple[dict[str, Any], ...] = ()  # parked messages a freed slot lets go
    refused: str | None = None  # the step's status, when it was not the one expected

    @property
    def recorded(self) -> bool:
        """This transition wrote the step's end (not a duplicate, superseded or refused)."""
        return not self.duplicate and not self.superseded and self.refused is None

    @classmethod
    def from_reply(cls, res: list[Any]) -> FinishOutcome:
        """Read finish.lua's reply (see its header)."""
        if res[0] == "refused":
            return cls(duplicate=False, refused=res[1])
        if res[0] == "superseded":
            return cls(duplicate=False, superseded=True)
        if res[0] == "dup":
            return cls(duplicate=True)
        tail = res[2:]
        ready = tuple(r for r in tail if r[:1] not in ("@", "!"))
        admitted = tuple(r[1:] for r in tail if r.startswith("@"))
        unparked = tuple(json.loads(r[1:]) for r in tail if r.startswith("!"))
        return cls(False, int(res[0]), res[1] or None, ready, admitted, unparked=unparked)


@dataclass(frozen=True)
class Decision:
    """An operator's decision (or a gate's timeout) that ends a step: FINISH records its
    event with the step's end, in the same transition."""

    event: str  # an EventType value, e.g. step_decision_skip
    by: str


@dataclass(frozen=True)
class Outcome:
    """A holder-only transition (retry, hand-back, release): done, or refused."""

    done: bool
    superseded: bool = False
    unparked: tuple[dict[str, Any], ...] = ()

    @classmethod
    def from_reply(cls, res: list[Any]) -> Outcome:
        code = int(res[0])
        msg = _s(res[1]) if len(res) > 1 else ""
        return cls(code == 1, code < 0, (json.loads(msg),) if msg else ())


@dataclass(frozen=True)
class Successor:
    """A step that may become ready when another hands on (see RunStore.hand_on)."""

    step: str
    # how many needs it joins on (its arrived set); 0: none to check
    needs: int


@dataclass(frozen=True)
class ChainLink:
    """What Celery would do after a step's task returns, done by its FINISH instead
    (``finish_hand_on.lua``): store the step's result; for a chain link also push the next
    link's message (kombu's payload, onto its queue's list) and hand on to ``successors``
    (a chord member hands on after Celery counted it: ``hand_on`` False)."""

    result_key: str
    result_value: str | bytes
    result_expires: int  # seconds; 0: none
    queue_key: str | None = None  # with payload: the next link to push
    payload: str | None = None
    hand_on: bool = True
    successors: tuple[Successor, ...] = ()

"""A step's life: claim, finish, retry, hand back, release (one script each)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from redis.typing import EncodableT

from ..definition.vocabulary import StepStatus
from .base import StoreBase
from .codec import _s, now_iso
from .records import ChainLink, Decision, FinishOutcome, Outcome, StartDecision


class Transitions(StoreBase):
    def start_step(
        self,
        run_id: str,
        step_id: str,
        *,
        token: str,
        needs: list[str],
        output_steps: list[str],
        workflow: str,
        lease_seconds: int,
        max_attempts: int,
        check_needs: bool = True,
        ignore_cancel: bool = False,
        needs_approval: bool = False,
        max_active: int = 0,
        park_message: Mapping[str, Any] | None = None,
        approval_prompt: str = "",
    ) -> StartDecision:
        """CLAIM: take the step (holder ``token``, a new attempt, a lease, a slot) or say why not.

        Returns the outputs of ``output_steps`` when it starts. When a gate says "not now"
        (paused, approval, max_active_steps), the decision is ``park``; called again with
        ``park_message`` (the delivery's message), the step is parked in the same
        transition (``parked``), or starts if the gate opened meanwhile.
        """
        k = self.keys
        keys = [
            *k.transition(run_id, step_id),
            *(k.step(run_id, n) for n in needs),
            *(k.step(run_id, n) for n in output_steps),
        ]
        args: list[EncodableT] = [
            run_id,
            step_id,
            token,
            now_iso(),
            lease_seconds,
            max_attempts,
            workflow,
            int(check_needs),
            len(needs),
            int(ignore_cancel),
            int(needs_approval),
            max_active,
            json.dumps(dict(park_message)) if park_message is not None else "",
            approval_prompt,
        ]
        res = [_s(x) for x in self._start(keys=keys, args=args)]
        return StartDecision.from_reply(res, needs, output_steps)

    def finish_step(
        self,
        run_id: str,
        step_id: str,
        *,
        token: str,
        status: StepStatus,
        workflow: str,
        exit_code: int | None = None,
        outputs: Mapping[str, str] | list[Any] | None = None,
        stderr_tail: list[str] | None = None,
        reason: str | None = None,
        allowed_failure: bool = False,
        attempt: int | None = None,
        skip: Iterable[str] = (),
        children: Mapping[str, int] | None = None,
        history: Mapping[str, Any] | None = None,
        watch_seconds: float | None = None,
        expect: str | None = None,
        decision: Decision | None = None,
        link: ChainLink | None = None,
        sends: Mapping[str, tuple[str, str]] | None = None,
    ) -> FinishOutcome:
        """FINISH: record a terminal status; skip ``skip``; join ``children`` (dynamic mode).

        With ``attempt`` (the delivery started the step), accepted only while ``token``
        holds the step at that attempt; without, only while no other delivery holds a live
        lease on it. A refused write is recorded as a ``step_result_discarded`` event and
        comes back as ``superseded``. ``watch_seconds``: the children this makes ready are
        watched from here (recovery.py), as the caller publishes them. ``expect``: the
        step must be in this status, else nothing is written (``refused``); ``decision``:
        its event is recorded with the step's end (an operator's decision). ``link``: a
        chain link's hand-on, done in the same script when the step is recorded
        (``finish_hand_on.lua``: the next link's message, the step's Celery result).
        ``sends``: child -> (list key, message), pushed for each child this FINISH makes
        ready (``finish_send.lua``; dynamic dispatch).
        """
        k = self.keys
        skip = list(skip)
        children = dict(children or {})
        keys = [
            *k.transition(run_id, step_id),
            *(k.step(run_id, s) for s in skip),
            *(k.arrived(run_id, c) for c in children),
        ]
        args: list[Any] = [
            run_id,
            step_id,
            token,
            now_iso(),
            status.value,
            "" if exit_code is None else exit_code,
            "" if outputs is None else json.dumps(outputs),
            "" if not stderr_tail else json.dumps(stderr_tail),
            reason or "",
            int(allowed_failure),
            workflow,
            "" if attempt is None else attempt,
            len(skip),
            *skip,
            len(children),
        ]
        for child, count in children.items():
            args += [child, count]
        args += _finish_tail(watch_seconds, history, expect, decision)
        # a run that ended here had its keys' expiry set by the same script (finalize)
        if link is not None:
            more_keys, more_args = self._link_arguments(run_id, step_id, link, watch_seconds)
            keys += more_keys
            args += [*more_args, len(more_args), len(more_keys)]
            reply = self._finish_hand_on(keys=keys, args=args)
        elif sends:
            reply = self._finish_send(keys=keys, args=args + _send_arguments(sends, keys))
        else:
            reply = self._finish(keys=keys, args=args)
        return FinishOutcome.from_reply([_s(x) for x in reply])

    def _link_arguments(
        self, run_id: str, step_id: str, link: ChainLink, watch_seconds: float | None
    ) -> tuple[list[Any], list[Any]]:
        """finish_hand_on.lua's extra KEYS and ARGV: the result, the message, HAND ON."""
        keys: list[Any] = [link.result_key]
        args: list[Any] = [link.result_value, link.result_expires]
        if link.queue_key is not None and link.payload is not None:
            keys.append(link.queue_key)
            args += ["1", link.payload]
        else:
            args.append("")
        if link.hand_on:
            seconds = watch_seconds if watch_seconds is not None else 0
            hand = self.hand_on_arguments(run_id, step_id, link.successors, seconds)
            keys += hand[0]
            args += ["1", *hand[1]]
        else:
            args.append("")
        return keys, args

    def retry_step(
        self,
        run_id: str,
        step_id: str,
        *,
        token: str,
        workflow: str,
        attempt: int,
        exit_code: int | None,
        reason: str,
        delay: float,
        history: Mapping[str, Any],
        lease_seconds: float,
    ) -> Outcome:
        """RETRY: a failed attempt will run again; the step waits as ``retrying``."""
        k = self.keys
        keys = k.transition(run_id, step_id)
        args: list[EncodableT] = [
            run_id,
            step_id,
            token,
            now_iso(),
            workflow,
            attempt,
            "" if exit_code is None else exit_code,
            reason,
            f"{delay:g}",
            json.dumps(dict(history)),
            lease_seconds,
        ]
        return Outcome.from_reply(self._retry(keys=keys, args=args))

    def handback_step(
        self,
        run_id: str,
        step_id: str,
        *,
        token: str,
        workflow: str,
        attempt: int,
        reason: str,
        lease_seconds: float,
    ) -> Outcome:
        """HANDBACK: give a running step back without a result: pending again, attempt
        uncounted (worker shutting down, or the delivery lost its lease and stopped)."""
        k = self.keys
        keys = k.transition(run_id, step_id)
        args: list[EncodableT] = [
            run_id,
            step_id,
            token,
            now_iso(),
            workflow,
            attempt,
            reason,
            lease_seconds,
        ]
        return Outcome.from_reply(self._handback(keys=keys, args=args))

    def release_step(self, run_id: str, step_id: str, token: str, attempt: int) -> Outcome:
        """RELEASE: a fanned-out step lets go (no holder, lease or slot) while its
        instances run; the fan-in task records it."""
        k = self.keys
        keys = [k.run(run_id), k.step(run_id, step_id), k.lease(run_id, step_id)]
        return Outcome.from_reply(self._release(keys=keys, args=[token, attempt, step_id]))


def _finish_tail(
    watch_seconds: float | None,
    history: Mapping[str, Any] | None,
    expect: str | None,
    decision: Decision | None,
) -> list[Any]:
    """FINISH's trailing arguments (finish.lua's header): lease_s, history, expect, the
    decision's event and who decided."""
    return [
        "" if watch_seconds is None else watch_seconds,
        json.dumps(dict(history)) if history else "",
        expect or "",
        *((decision.event, decision.by) if decision else ("", "")),
    ]


def _send_arguments(sends: Mapping[str, tuple[str, str]], keys: list[Any]) -> list[Any]:
    """finish_send.lua's extra ARGV (child ids, then payloads, then the counts), its
    extra KEYS (each child's list) appended to ``keys``."""
    children = list(sends)
    keys += [sends[c][0] for c in children]
    return [*children, *(sends[c][1] for c in children), 2 * len(children), len(children)]

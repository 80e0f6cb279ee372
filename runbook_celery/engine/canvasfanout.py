"""A fanned-out step (``matrix``, ``for_each``) inside a Celery canvas.

The step's task records the instances and sends them in lanes exactly as dynamic dispatch
does (a window at a time, each ending instance sending the next of its lane: the instance
cap, ``max_parallel``, bounded messages and cancel stay as they are). What differs is who
continues the canvas: the step's task does not return into it. It hands its place (what
follows it in its chain, the chord it counts toward, its links) to its join, the
``runbook.fan_in`` task, and ends with ``FannedOut`` (an ``Ignore``: Celery neither stores a
result nor continues from it). This is ``Task.replace`` with the replacement sent later:
by the last instance to end, instead of joining inline (``step.fanout.instance_ended``). The
join records the step, its result is the step's outputs (one per instance), and Celery
continues the canvas from it; a failed join raises, so the canvas stops there as after any
failed step.

The join message is kept with the step in the store before any instance exists
(``RunStore.keep_continuation``), so the instance that finds the join due always finds it;
the reconciler sends the same message when a join is due and its message is lost.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import dispatch
from .app import FANIN_TASK, app


def continuation(
    request: Any, snapshot: Mapping[str, Any], run_id: str, step_id: str
) -> dict[str, Any]:
    """The join message, in the canvas place of the request's task (as Task.replace sets
    it: chord membership, group, links, the rest of its chain), as a JSON-able dict."""
    sig = dispatch.step_signature(snapshot, run_id, step_id, task=FANIN_TASK)
    options: dict[str, Any] = {"root_id": request.root_id or run_id}
    if request.chord:
        options.update(chord=request.chord, group_id=request.group, group_index=request.group_index)
    if request.chain:
        options["chain"] = list(request.chain)
    if request.callbacks:
        options["link"] = list(request.callbacks)
    if request.errbacks:
        options["link_error"] = list(request.errbacks)
    sig.set(**options)
    return dict(sig)


def send_join(
    message: Mapping[str, Any] | None, snapshot: Mapping[str, Any], run_id: str, step_id: str
) -> None:
    """Send the join of a fanned-out step (its instances have all ended): the kept message
    of a canvas run, else (a dynamic run) a plain join."""
    if message:
        app.signature(dict(message)).apply_async()
        return
    sig = dispatch.step_signature(snapshot, run_id, step_id, task=FANIN_TASK)
    sig.apply_async(root_id=run_id)

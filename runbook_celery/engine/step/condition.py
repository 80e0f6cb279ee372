"""Stage: ``if:`` and the values expressions read (the resolver).

A condition is decided from the records of the step's ancestors, read once; the resolver
answers ``${{ }}`` references (params, outputs, matrix/item values, statuses) for the
condition, the step's environment, ``for_each`` and ``with:``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ...definition import expressions as ex

if TYPE_CHECKING:
    from .delivery import StepExecution


def outputs_of(h: dict[str, str]) -> Any:
    """A step record's outputs (a list of each instance's for a fanned-out step)."""
    return json.loads(h["outputs"]) if h.get("outputs") else {}


def _ok(h: dict[str, str]) -> bool:
    return h.get("status") == "succeeded" or (
        h.get("status") == "failed" and h.get("allowed_failure") == "1"
    )


def condition(execution: StepExecution) -> tuple[bool, bool, str]:
    """Evaluate ``if:``: returns (run it?, run even though the run is cancelled?, why)."""
    x = execution
    node = ex.parse_condition(x.spec.condition or "")
    # like GitHub Actions: a plain expression implies success(), unless it reads a status
    if not ex.calls(node) and not ex.names_a_status(node):
        node = ex.BinOp("&&", ex.Call("success"), node)
    # the whole snapshot's graph: a rerun's reused steps are needs and ancestors too
    ancestors = sorted(x.ctx.full_graph.ancestors(x.step_id))
    hashes = x.store.step_hashes(x.run_id, ancestors)
    cancel = x.store.cancel_requested(x.run_id)
    status = {
        "success": all(_ok(hashes[n]) for n in x.spec.needs) and not cancel,
        "failure": any(
            h.get("status") == "failed" and h.get("allowed_failure") != "1" for h in hashes.values()
        ),
        "always": True,
        "cancelled": cancel,
    }
    outputs = {sid: outputs_of(h) for sid, h in hashes.items()}
    x.statuses = {sid: h.get("status", "") for sid, h in hashes.items()}
    verdict = ex.truthy(ex.evaluate(node, resolver(x, outputs), status))
    survives_cancel = bool(ex.calls(node) & {"always", "cancelled"})
    if cancel and not survives_cancel:
        return False, False, "run cancelled"
    return verdict, cancel, "" if verdict else f"condition false: {x.spec.condition}"


def resolver(execution: StepExecution, outputs: dict[str, Any]) -> Callable[[ex.Ref], Any]:
    """What each ``${{ }}`` reference of this delivery's step means, given the outputs
    of the steps it reads (``need_outputs`` from the claim)."""
    x = execution

    def resolve(ref: ex.Ref) -> Any:
        if ref.kind == "params":
            return x.ctx.snapshot.params.get(ref.name, "")
        if ref.kind == "outputs":
            got = outputs.get(ref.name, {})
            if isinstance(got, list):  # a fanned-out step: one value per instance
                return [o.get(ref.key, "") for o in got]
            return got.get(ref.key, "")
        if ref.kind == "all_outputs":
            return outputs.get(ref.name, {})
        if ref.kind == "matrix":
            return x.values.get("matrix", {}).get(ref.name, "")
        if ref.kind == "item":
            return x.values.get("item", "")
        if ref.kind == "status":
            return step_status(x, ref.name)
        if ref.kind == "run_status":
            return run_status(x)
        if ref.kind == "needs":
            return {
                sid: {"result": step_status(x, sid), "outputs": outputs.get(sid, {})}
                for sid in x.spec.needs
            }
        return ""

    return resolve


def step_status(execution: StepExecution, step_id: str) -> str:
    """``steps.ID.status`` of a step this one needs (so it has finished)."""
    x = execution
    if step_id not in x.statuses:
        unread = [s for s in (step_id, *x.spec.needs) if s not in x.statuses]
        x.statuses.update(
            (sid, h.get("status", "")) for sid, h in x.store.step_hashes(x.run_id, unread).items()
        )
    return x.statuses.get(step_id, "")


def run_status(execution: StepExecution) -> str:
    """``run.status`` and ``RUNBOOK_RUN_STATUS``: the run's outcome so far."""
    if execution.run_status_seen is None:
        execution.run_status_seen = execution.store.run_status_so_far(execution.run_id)
    return execution.run_status_seen

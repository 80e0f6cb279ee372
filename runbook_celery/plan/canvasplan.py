"""Which steps a Celery canvas runs exactly, and why a workflow needs dynamic dispatch.

Pure (no Celery, no Redis): ``compile.choose_mode`` and the ``plan`` command ask it.

A canvas continues past a step only when the step's task returns; a step that fails raises,
and Celery runs nothing after it (its descendants are recorded ``skipped``). So inside a
canvas:

* an ``if:`` that can only be true when every need succeeded (a plain condition on params
  and outputs, which implies ``success()``, or one whose top-level ``&&`` includes
  ``success()``) is exact: the step task evaluates it, a false one records ``skipped`` and
  returns, and the canvas goes on;
* an ``if:`` that may be true after a failure or a cancel (``failure()``, ``always()``,
  ``cancelled()``, or one reading ``steps.X.status``, ``needs.X.result`` or ``run.status``,
  which does not imply ``success()``) cannot be reached by the canvas, which has stopped
  before the step. Such a workflow still runs as a canvas while nothing fails; the failing
  step's task (or the cancel) first switches the run to dynamic dispatch from its record
  (``RunStore.fail_over_to_dynamic``, the reconciler's fail-over), then records the
  failure, whose transition joins its children: from there every step runs exactly as in
  a dynamic run. Continuing the canvas past a failure instead would show failed steps as
  Celery successes and store them so in the result backend;
* ``matrix`` and ``for_each`` are exact: the step task records the instances, sends them
  in lanes as dynamic mode does, and hands its place in the canvas to its join, which the
  last instance sends (``canvasfanout``); the canvas continues after the join.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..definition import expressions as ex
from ..definition import matrix as mx

AFTER_FAILURE = frozenset({"failure", "always", "cancelled"})


@dataclass(frozen=True)
class StepShape:
    """What of a step decides how it can be dispatched."""

    id: str
    condition: str | None = None
    matrix: dict[str, Any] | None = None
    for_each: str | None = None
    uses: str | None = None

    @classmethod
    def of_spec(cls, spec: dict[str, Any]) -> StepShape:
        """From a snapshot's step."""
        return cls(
            spec["id"], spec.get("if"), spec.get("matrix"), spec.get("for_each"), spec.get("uses")
        )

    @classmethod
    def of_step(cls, step: Any) -> StepShape:
        """From a validated model step."""
        return cls(
            step.id,
            step.if_.strip() if step.if_ else None,
            step.matrix if step.matrix else None,
            step.for_each.strip() if step.for_each else None,
            step.uses,
        )


def condition_problem(text: str) -> str | None:
    """Why a canvas cannot decide this ``if:`` exactly, or None when it can."""
    try:
        node = ex.parse_condition(text)
    except ex.ExpressionError:
        return None  # validation refuses it; the step task reports it as it always has
    used = ex.calls(node)
    if not used and not ex.names_a_status(node):
        return None  # implies success(): true only when every need succeeded
    if _conjunct_success(node):
        return None
    if used & AFTER_FAILURE:
        names = ", ".join(f"{n}()" for n in sorted(used & AFTER_FAILURE))
        return f"uses {names}: it may run after a failure or a cancel, which ends a canvas"
    return (
        "reads a step's or the run's status (no implied success()): it may run after a "
        "failure, which ends a canvas"
    )


def _conjunct_success(node: ex.Node) -> bool:
    """Whether ``success()`` is one of the top-level ``&&`` terms (so it gates the rest)."""
    if isinstance(node, ex.Call):
        return node.name == "success"
    if isinstance(node, ex.BinOp) and node.op == "&&":
        return _conjunct_success(node.left) or _conjunct_success(node.right)
    return False


def handoffs(steps: Iterable[StepShape]) -> list[str]:
    """The steps that may run after a failure or a cancel, each with why, as sentences:
    a canvas run with any hands over to dynamic dispatch at its first failure or cancel."""
    out = []
    for step in steps:
        if step.condition and (why := condition_problem(step.condition)) is not None:
            out.append(f"step {step.id!r} has if: {step.condition}, which {why}")
    return out


def dynamic_only(steps: Iterable[StepShape]) -> list[str]:
    """The steps no canvas runs exactly, each with why: a run with any is dynamic from the
    start. A ``uses:`` step parks until its child ends and is finished from outside; a
    parked message sent again by a canvas that a failure let go on would stop its chain."""
    return [f"step {s.id!r} runs a child workflow (uses:)" for s in steps if s.uses]


def hands_off(specs: Iterable[dict[str, Any]]) -> bool:
    """Whether a run of this snapshot switches to dynamic dispatch at a failure or cancel."""
    return bool(handoffs(StepShape.of_spec(s) for s in specs))


def step_notes(steps: Iterable[StepShape], cap: int | None = None) -> dict[str, str]:
    """How each step with an extra runs inside the canvas, for ``plan``."""
    notes: dict[str, str] = {}
    for step in steps:
        parts = []
        if step.condition:
            parts.append(f"if: {step.condition} (decided by its task; false: skipped)")
        if step.matrix is not None:
            parts.append(f"matrix: {_matrix_size(step.matrix, cap)}, joined before what follows")
        if step.for_each is not None:
            parts.append(
                f"for_each: {step.for_each}: one instance per item, made at run time, "
                "joined before what follows"
            )
        if parts:
            notes[step.id] = "; ".join(parts)
    return notes


def _matrix_size(matrix: dict[str, Any], cap: int | None) -> str:
    try:
        n = len(mx.expand(matrix, cap if cap is not None else 10**9))
    except mx.TooManyCombinations as exc:
        return f"{exc.count:,} combinations (more than a step may have)"
    return f"{n} instance{'' if n == 1 else 's'}"

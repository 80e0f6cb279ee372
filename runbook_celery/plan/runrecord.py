"""Frozen, JSON-able views of a run and its steps, as users and the CLI see them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from ..definition import expressions as ex
from ..definition.matrix import label as matrix_label
from ..definition.vocabulary import FailureReason, RunStatus, StepStatus
from .masking import MASK_TEXT

_STEP_CONTROL_FIELDS = (
    "approval_prompt",
    "approved_by",
    "approved_at",
    "waiting_since",
    "decided_by",
    "env_override",
)


@dataclass(frozen=True)
class StepRecord:
    """One step of a run as recorded: status, timing, exit code, outputs, attempts.

    ``status`` is a ``StepStatus`` and ``reason`` a ``FailureReason`` when it is one (a
    skip's reason is a sentence); both are ``StrEnum``s, so ``== "succeeded"`` still holds.
    """

    status: StepStatus
    exit_code: int | None = None
    started_at: str | None = None
    finished_at: str | None = None
    outputs: Any = field(default_factory=dict)  # a list for a fanned-out step
    attempts: int = 0
    reason: FailureReason | str | None = None
    stderr_tail: list[str] = field(default_factory=list)
    allowed_failure: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)
    reused: bool = False
    control: dict[str, str] = field(default_factory=dict)  # approvals and decisions
    values: dict[str, Any] = field(default_factory=dict)
    child_run: str | None = None  # a uses: step's child run (childruns.py)

    def __post_init__(self) -> None:
        # records built by hand (tests, views) with plain text get the same types
        object.__setattr__(self, "status", StepStatus(self.status))
        object.__setattr__(self, "reason", _reason(self.reason))

    @classmethod
    def from_hash(cls, h: dict[str, str], hidden: frozenset[str] = frozenset()) -> StepRecord:
        """``hidden``: secret values given with ``retry --env``, shown as ``***``."""
        return cls(
            status=StepStatus(h.get("status") or "pending"),
            exit_code=int(h["exit_code"]) if h.get("exit_code") not in (None, "") else None,
            started_at=h.get("started_at"),
            finished_at=h.get("finished_at"),
            outputs=json.loads(h["outputs"]) if h.get("outputs") else {},
            attempts=int(h.get("attempts") or 0),
            reason=_reason(h.get("reason")),
            stderr_tail=json.loads(h["stderr_tail"]) if h.get("stderr_tail") else [],
            allowed_failure=h.get("allowed_failure") == "1",
            history=json.loads(h["history"]) if h.get("history") else [],
            values=json.loads(h["values"]) if h.get("values") else {},
            reused=h.get("reused") == "1",
            control=_control(h, hidden),
            child_run=h.get("child_run") or None,
        )

    def label(self, step_id: str, limit: int = 60) -> str:
        """How a step is named on screen: an instance with its values, as GitHub shows
        ``test (python-version=3.12, os=linux)``; the id alone for other steps."""
        if not self.values:
            return step_id
        if isinstance(self.values.get("matrix"), dict):
            text = matrix_label(self.values["matrix"])
        else:
            text = ", ".join(f"{k}={v}" for k, v in self.values.items())
        if len(text) > limit:
            text = text[: limit - 3] + "..."
        return f"{step_id} ({text})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": str(self.status),
            "exit_code": self.exit_code,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "outputs": self.outputs,
            "attempts": self.attempts,
            "reason": None if self.reason is None else str(self.reason),
            "stderr_tail": list(self.stderr_tail),
            "continue_on_error": self.allowed_failure,
            "history": list(self.history),
            "reused": self.reused,
            **({"control": dict(self.control)} if self.control else {}),
            **({"values": self.values} if self.values else {}),
            **({"child_run": self.child_run} if self.child_run else {}),
        }


def _reason(value: str | None) -> FailureReason | str | None:
    """The vocabulary member when the reason is one; other reasons (skips) as written."""
    if not value:
        return None
    try:
        return FailureReason(value)
    except ValueError:
        return value


def _control(h: dict[str, str], hidden: frozenset[str]) -> dict[str, str]:
    """A step's approvals and decisions; secret values given with `retry --env` as ***."""
    control = {k: h[k] for k in _STEP_CONTROL_FIELDS if h.get(k)}
    if hidden and "env_override" in control:
        env = json.loads(control["env_override"])
        shown = {k: MASK_TEXT if v in hidden else v for k, v in env.items()}
        control["env_override"] = json.dumps(shown)
    return control


_CONTROL_FIELDS = (
    "paused_by",
    "paused_at",
    "resumed_by",
    "resumed_at",
    "reason",
    "cgroup",
    "triggered_by",
    "cancelled_by",
)


@dataclass(frozen=True)
class RunRecord:
    """A run as recorded: status, params and every step; ``to_dict()`` is the JSON shape.

    ``status`` is a ``RunStatus`` (a ``StrEnum``: compares equal to its text)."""

    id: str
    workflow: str
    status: RunStatus
    params: dict[str, str]
    steps: dict[str, StepRecord]
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    sha256: str | None = None
    mode: str | None = None
    rerun_of: str | None = None
    control: dict[str, str] = field(default_factory=dict)  # paused_by/at, triggered_by, ...
    outputs: dict[str, str] = field(default_factory=dict)  # workflow outputs, once ended
    parent_run: str | None = None  # a child run: the run whose uses: step started it
    parent_step: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", RunStatus(self.status))

    @classmethod
    def from_hash(cls, h: dict[str, str], steps: dict[str, StepRecord]) -> RunRecord:
        record = cls._from_hash(h, steps)
        declared = _declared_outputs(h.get("snapshot", ""))
        if declared and record.finished:
            record = replace(record, outputs=workflow_outputs(declared, record))
        return record

    @classmethod
    def _from_hash(cls, h: dict[str, str], steps: dict[str, StepRecord]) -> RunRecord:
        return cls(
            id=h["id"],
            workflow=h.get("workflow", ""),
            status=RunStatus(h.get("status") or "pending"),
            params=json.loads(h.get("params") or "{}"),
            steps=steps,
            created_at=h.get("created_at"),
            started_at=h.get("started_at"),
            finished_at=h.get("finished_at"),
            sha256=h.get("sha256"),
            mode=h.get("mode"),
            rerun_of=h.get("rerun_of") or None,
            control={k: h[k] for k in _CONTROL_FIELDS if h.get(k)},
            parent_run=h.get("parent_run") or None,
            parent_step=h.get("parent_step") or None,
        )

    @property
    def children(self) -> dict[str, str]:
        """The child runs of this run's ``uses:`` steps, by step id (once started)."""
        return {sid: s.child_run for sid, s in self.steps.items() if s.child_run}

    @property
    def finished(self) -> bool:
        return self.status.terminal

    @property
    def succeeded(self) -> bool:
        return self.status == RunStatus.SUCCEEDED

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "workflow": self.workflow,
            "status": str(self.status),
            "params": dict(self.params),
            "steps": {sid: s.to_dict() for sid, s in self.steps.items()},
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "sha256": self.sha256,
            "mode": self.mode,
            "rerun_of": self.rerun_of,
            **({"control": dict(self.control)} if self.control else {}),
            **({"outputs": dict(self.outputs)} if self.outputs else {}),
            **({"parent_run": self.parent_run} if self.parent_run else {}),
            **({"parent_step": self.parent_step} if self.parent_step else {}),
            **({"children": self.children} if self.children else {}),
        }


def _declared_outputs(snapshot_json: str) -> dict[str, str]:
    """The snapshot's ``workflow_outputs`` (parsed only when the snapshot has some)."""
    if '"workflow_outputs": {"' not in snapshot_json:
        return {}
    declared = json.loads(snapshot_json).get("workflow_outputs") or {}
    return {str(k): str(v) for k, v in declared.items()}


def workflow_outputs(declared: dict[str, str], record: RunRecord) -> dict[str, str]:
    """A workflow's ``outputs:`` evaluated over its ended run: step outputs are final then,
    so every read gives the same values. A value that cannot be evaluated (``fromJSON`` of
    text that is not JSON) is empty; the step that produced the text is where to look."""

    def resolve(ref: ex.Ref) -> Any:
        if ref.kind == "params":
            return record.params.get(ref.name, "")
        step = record.steps.get(ref.name)
        if ref.kind == "run_status":
            return record.status
        if step is None:
            return ""
        if ref.kind == "status":
            return step.status
        if ref.kind == "all_outputs":
            return step.outputs
        if ref.kind == "outputs":
            if isinstance(step.outputs, list):
                return [o.get(ref.key, "") for o in step.outputs]
            return step.outputs.get(ref.key, "")
        return ""

    out: dict[str, str] = {}
    for name, template in declared.items():
        try:
            out[name] = ex.substitute(template, resolve)
        except ex.ExpressionError:
            out[name] = ""
    return out

"""What the run page shows, computed from a run record and its snapshot. Pure.

The record says each step's status; the page also says *why* a step is not running yet
(a worker, a dependency, an approval, a decision, a concurrency slot, a paused run), what
each attempt did, and which buttons apply. Keeping this out of the templates lets the
live updates re-render exactly what the first page load rendered.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..plan.runrecord import RunRecord, StepRecord
from ..store.events import TERMINAL_RUN_STATUSES, StepStatus
from .dag import Node, svg

VALUE_CHARS = 400  # longest output value shown in the table (the API has them whole)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u2028\u2029]")
_FINISHED = frozenset({"succeeded", "failed", "skipped", "cancelled"})


@dataclass(frozen=True)
class Attempt:
    number: int
    exit_code: int | None
    reason: str | None
    started_at: str | None
    finished_at: str | None
    duration: str


@dataclass(frozen=True)
class StepRow:
    """One line of the step table (a step, or an instance of a fanned-out step)."""

    id: str
    parent: str | None
    status: str
    reason: str | None
    waiting_for: str | None
    prompt: str | None
    attempts: list[Attempt]
    outputs: list[tuple[str, str]]
    stderr_tail: list[str]
    values: list[tuple[str, str]]
    started_at: str | None
    duration: str
    task_id: str | None  # the Celery task id, for Flower's task page
    actions: list[str]
    control: Mapping[str, str] = field(default_factory=dict)
    instances: Mapping[str, int] | None = None


@dataclass(frozen=True)
class RunView:
    record: RunRecord
    rows: list[StepRow]
    dag: str
    counts: list[tuple[str, int]]
    duration: str
    actions: list[str]
    note: str | None  # why the whole run waits (paused, concurrency group)

    @property
    def finished(self) -> bool:
        return self.record.status in TERMINAL_RUN_STATUSES


def run_view(
    record: RunRecord,
    snapshot: Mapping[str, Any],
    now: datetime | None = None,
    default_queue: str = "runbook",
) -> RunView:
    """Everything the run page draws, from the record and the frozen snapshot."""
    now = now or datetime.now(UTC)
    specs = {
        s["id"]: {**s, "queue": s.get("queue") or default_queue} for s in snapshot.get("steps", [])
    }
    needs = {sid: list(spec.get("needs", ())) for sid, spec in specs.items()}
    instances = _instances(record, specs)
    rows: list[StepRow] = []
    nodes: dict[str, Node] = {}
    for sid in specs:
        step = record.steps.get(sid) or StepRecord(status=StepStatus.PENDING)
        counts = _count(record, instances.get(sid)) if sid in instances else None
        nodes[sid] = Node(step.status, counts)
        rows.append(_row(sid, None, step, record, specs, needs, now, counts))
        for iid in instances.get(sid, []):
            rows.append(_row(iid, sid, record.steps[iid], record, specs, needs, now, None))
    tally: dict[str, int] = {}
    for sid in specs:
        status = (record.steps.get(sid) or StepRecord(status=StepStatus.PENDING)).status
        tally[status] = tally.get(status, 0) + 1
    return RunView(
        record=record,
        rows=rows,
        dag=svg(needs, nodes),
        counts=sorted(tally.items()),
        duration=duration(record.started_at, record.finished_at, now),
        actions=run_actions(record),
        note=_run_note(record, snapshot),
    )


def _instances(record: RunRecord, specs: Mapping[str, Any]) -> dict[str, list[str]]:
    """The instance ids (``step[0]``...) of each fanned-out step, in index order."""
    out: dict[str, list[str]] = {}
    for iid in record.steps:
        parent, bracket, rest = iid.rpartition("[")
        if bracket and parent in specs and rest.endswith("]") and rest[:-1].isdigit():
            out.setdefault(parent, []).append(iid)
    for sid, spec in specs.items():
        if sid not in out and (spec.get("matrix") or spec.get("for_each")):
            out[sid] = []  # fans out, no instances recorded yet
    for ids in out.values():
        ids.sort(key=lambda i: int(i.rpartition("[")[2][:-1]))
    return out


def _count(record: RunRecord, ids: list[str] | None) -> dict[str, int]:
    counts: dict[str, int] = {}
    for iid in ids or []:
        status = record.steps[iid].status
        counts[status] = counts.get(status, 0) + 1
    return counts


def _row(
    sid: str,
    parent: str | None,
    step: StepRecord,
    record: RunRecord,
    specs: Mapping[str, Any],
    needs: Mapping[str, list[str]],
    now: datetime,
    counts: Mapping[str, int] | None,
) -> StepRow:
    spec = specs.get(parent or sid, {})
    attempts = [
        Attempt(
            number=int(h.get("attempt") or n + 1),
            exit_code=h.get("exit_code"),
            reason=h.get("reason"),
            started_at=h.get("started_at"),
            finished_at=h.get("finished_at"),
            duration=duration(h.get("started_at"), h.get("finished_at"), now),
        )
        for n, h in enumerate(step.history)
    ]
    if step.status in ("running", "retrying") and step.attempts > len(attempts):
        attempts.append(
            Attempt(
                step.attempts,
                None,
                None,
                step.started_at,
                None,
                duration(step.started_at, None, now),
            )
        )
    ran = step.attempts > 0 or bool(step.history)
    return StepRow(
        id=sid,
        parent=parent,
        status=step.status,
        reason=reason_text(step),
        waiting_for=waiting_for(sid, parent, step, record, spec, needs),
        prompt=step.control.get("approval_prompt") if step.status == "awaiting_approval" else None,
        attempts=attempts,
        outputs=_outputs(step.outputs),
        stderr_tail=[printable(line) for line in step.stderr_tail],
        values=_values(step.values),
        started_at=step.started_at,
        duration=duration(step.started_at, step.finished_at, now) if step.started_at else "",
        task_id=f"{record.id}.{sid}" if ran and counts is None else None,
        actions=step_actions(step.status),
        control=step.control,
        instances=counts,
    )


def waiting_for(
    sid: str,
    parent: str | None,
    step: StepRecord,
    record: RunRecord,
    spec: Mapping[str, Any],
    needs: Mapping[str, list[str]],
) -> str | None:
    """What a step that has not started is waiting for, in words; None if it is not waiting."""
    if record.status in TERMINAL_RUN_STATUSES:
        return None
    status = step.status
    if status == StepStatus.AWAITING_APPROVAL:
        return "an approval"
    if status == StepStatus.AWAITING_DECISION:
        return "a decision: retry, skip or abort"
    if status == StepStatus.WAITING:
        if record.status == "paused":
            return "the run to be resumed (paused)"
        return "a free slot: max_active_steps reached"
    if status == StepStatus.RETRYING:
        return "its retry delay, then a worker"
    if status != StepStatus.PENDING:
        return None
    if record.status == "queued":
        group = record.control.get("cgroup", "")
        return f"a concurrency slot in group {group!r}" if group else "a concurrency slot"
    if record.status == "paused":
        return "the run to be resumed (paused)"
    if parent is not None:
        return f"a worker (queue {spec.get('queue') or 'runbook'}) or a free lane of {parent}"
    unfinished = [
        d
        for d in needs.get(sid, [])
        if (record.steps.get(d) or StepRecord(StepStatus.PENDING)).status not in _FINISHED
    ]
    if unfinished:
        return "dependencies: " + ", ".join(unfinished)
    if spec.get("approval") and not step.control.get("approved_by"):
        return "a worker, then an approval"
    return f"a worker (queue {spec.get('queue') or 'runbook'})"


def run_actions(record: RunRecord) -> list[str]:
    """The run-level buttons that apply to a run in this status."""
    status = record.status
    if status in TERMINAL_RUN_STATUSES:
        if status == "succeeded":
            return ["rerun"]
        return ["rerun_failed", "rerun"]
    actions = ["cancel"]
    if status == "paused":
        actions.append("resume")
    elif status in ("running", "pending", "awaiting_decision"):
        actions.append("pause")
    if status == "awaiting_decision":
        actions.append("abort")
    return actions


def step_actions(status: str) -> list[str]:
    if status == StepStatus.AWAITING_APPROVAL:
        return ["approve", "reject"]
    if status == StepStatus.AWAITING_DECISION:
        return ["retry", "skip"]
    return []


def _run_note(record: RunRecord, snapshot: Mapping[str, Any]) -> str | None:
    c = record.control
    if record.status == "paused":
        return (
            f"Paused by {c.get('paused_by', '?')} at {c.get('paused_at', '?')}: no new step starts."
        )
    if record.status == "queued":
        group = snapshot.get("concurrency") or {}
        return (
            f"Queued: waiting for a slot in concurrency group {group.get('group', '?')!r} "
            f"(limit {group.get('limit', '?')})."
        )
    return None


def _outputs(outputs: Any) -> list[tuple[str, str]]:
    if isinstance(outputs, dict):
        return [(str(k), _short(v)) for k, v in outputs.items()]
    if isinstance(outputs, list):  # a fanned-out step: each instance's outputs, if any
        return [
            (f"[{i}]", _short(json.dumps(v, sort_keys=True))) for i, v in enumerate(outputs) if v
        ]
    return []


def _values(values: Mapping[str, Any]) -> list[tuple[str, str]]:
    """An instance's matrix values as ``key=value`` (``item=...`` for ``for_each``)."""
    out: list[tuple[str, str]] = []
    for key, value in values.items():
        if key == "matrix" and isinstance(value, dict):
            out += [(str(k), _short(v)) for k, v in value.items()]
        else:
            out.append((key, _short(value)))
    return out


def reason_text(step: StepRecord) -> str | None:
    """The recorded reason, with the exit code when that is the reason."""
    if step.reason == "exit_code" and step.exit_code is not None:
        return f"exit code {step.exit_code}"
    return step.reason


def _short(value: Any) -> str:
    text = printable(value if isinstance(value, str) else json.dumps(value))
    return text if len(text) <= VALUE_CHARS else text[: VALUE_CHARS - 1] + "…"


def printable(text: str) -> str:
    """Control characters (terminal escapes, NUL, line separators) shown as ``\\xNN`` text."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def duration(start: str | None, end: str | None, now: datetime) -> str:
    """``1.23s`` / ``4m05s`` / ``2h03m`` between two ISO times (to now while running)."""
    begun = parse_time(start)
    if begun is None:
        return ""
    seconds = max(0.0, ((parse_time(end) or now) - begun).total_seconds())
    return seconds_text(seconds)


def seconds_text(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.2f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"

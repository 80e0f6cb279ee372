"""The text of a notification: what happened to which run, and for a failure, why.

Pure: built from the event and the run record, then masked as a whole (the run's secrets,
the URL's secrets, passwords in URLs), since step ids, prompts and stderr are untrusted
text that may hold them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

from ..core.redaction import MASK, redact
from ..definition.notifyconfig import NotifyEvent
from ..plan.runrecord import RunRecord, StepRecord

MAX_STEPS_LISTED = 5  # failed steps described in one message
STDERR_LINES = 10  # of each failed step's stderr tail
LINE_CHARS = 300
BODY_CHARS = 8000


@dataclass(frozen=True)
class Message:
    """What is sent: ``kind`` is apprise's notify type (info, success, warning, failure)."""

    title: str
    body: str
    kind: str


_KIND = {
    NotifyEvent.STARTED: "info",
    NotifyEvent.SUCCEEDED: "success",
    NotifyEvent.FAILED: "failure",
    NotifyEvent.CANCELLED: "warning",
    NotifyEvent.SKIPPED: "info",
    NotifyEvent.AWAITING_APPROVAL: "warning",
    NotifyEvent.AWAITING_DECISION: "warning",
    NotifyEvent.STEP_FAILED: "failure",
}


def masker(secrets: Iterable[str]) -> Callable[[str], str]:
    """Replaces each secret and every password in a URL with ***.

    A secret is found however much of it a library percent-encoded on its way into a URL
    (apprise quotes ``/`` but not ``&`` in a path, requests quotes both in a query): each
    of its characters may appear as itself or as its %XX bytes.
    """
    values = sorted({s for s in secrets if s}, key=len, reverse=True)
    if not values:
        return redact
    pattern = re.compile("|".join(_any_encoding(v) for v in values))

    def mask(text: str) -> str:
        return redact(pattern.sub(MASK, text))

    return mask


def _any_encoding(secret: str) -> str:
    """A regex matching ``secret`` with any of its characters percent-encoded (or + for space)."""
    parts = []
    for char in secret:
        encoded = "".join(f"%{b:02X}" for b in char.encode())
        options = [re.escape(char), re.escape(encoded), re.escape(encoded.lower())]
        if char == " ":
            options.append(r"\+")
        parts.append("(?:" + "|".join(dict.fromkeys(options)) + ")")
    return "".join(parts)


def compose(
    on: NotifyEvent,
    event: Mapping[str, str],
    record: RunRecord | None,
    *,
    flower_url: str | None,
    mask: Callable[[str], str],
) -> Message:
    """The message for ``event`` (a stream entry's fields) of the run ``record``.

    ``record`` is None when the run has expired meanwhile: the event alone is described.
    """
    run_id = event.get("run_id", "")
    workflow = event.get("workflow", "") or (record.workflow if record else "")
    step = event.get("step") or ""
    what = f"run {run_id} of workflow {workflow}"
    lines: list[str]
    if on in _STEP_EVENTS:
        title, lines = _step_message(on, event, record, run_id, step, what)
    else:
        title, lines = _run_message(on, event, record, what)
    if flower_url:
        lines += ["", f"Run page: {flower_url}/runs/{quote(run_id, safe='')}"]
    body = "\n".join(lines)
    if len(body) > BODY_CHARS:
        body = body[: BODY_CHARS - 20] + "\n[... cut]"
    return Message(mask(f"{workflow}: {title} (run {run_id})"), mask(body), _KIND[on])


_STEP_EVENTS = frozenset(
    {NotifyEvent.AWAITING_APPROVAL, NotifyEvent.AWAITING_DECISION, NotifyEvent.STEP_FAILED}
)
_RUN_VERB = {
    NotifyEvent.STARTED: "started",
    NotifyEvent.SUCCEEDED: "succeeded",
    NotifyEvent.FAILED: "failed",
    NotifyEvent.CANCELLED: "was cancelled",
    NotifyEvent.SKIPPED: "was skipped",
}


def _run_message(
    on: NotifyEvent, event: Mapping[str, str], record: RunRecord | None, what: str
) -> tuple[str, list[str]]:
    verb = _RUN_VERB[on]
    lines = [f"The {what} {verb}."]
    if event.get("reason"):
        lines.append(f"Reason: {event['reason']}")
    if record is not None and on is not NotifyEvent.STARTED:
        took = _seconds_between(record.started_at or record.created_at, record.finished_at)
        if took is not None:
            lines.append(f"Duration: {took:.1f} s")
        if on is NotifyEvent.FAILED:
            failed = [(sid, s) for sid, s in record.steps.items() if _failed(s)]
            for sid, step in failed[:MAX_STEPS_LISTED]:
                details, stderr = _failure(step)
                lines += ["", f"Failed step {sid}" + (f": {details}" if details else ""), *stderr]
            if len(failed) > MAX_STEPS_LISTED:
                lines += ["", f"... and {len(failed) - MAX_STEPS_LISTED} more failed steps"]
    return verb, lines


def _step_message(
    on: NotifyEvent,
    event: Mapping[str, str],
    record: RunRecord | None,
    run_id: str,
    step_id: str,
    what: str,
) -> tuple[str, list[str]]:
    step = record.steps.get(step_id) if record is not None else None
    if on is NotifyEvent.AWAITING_APPROVAL:
        prompt = (step.control.get("approval_prompt") if step else None) or "Approve?"
        return f"step {step_id} awaits approval", [
            f"Step {step_id} of {what} awaits approval: {prompt}",
            f"Approve: runbook-celery approve {run_id} {step_id}",
            f"Reject:  runbook-celery reject {run_id} {step_id}",
        ]
    details, stderr = _failure(step, event)
    if on is NotifyEvent.AWAITING_DECISION:
        return f"step {step_id} awaits a decision", [
            f"Step {step_id} of {what} failed"
            + (f" ({details})" if details else "")
            + " and awaits a decision.",
            *stderr,
            "",
            f"Retry: runbook-celery retry {run_id} {step_id}",
            f"Skip:  runbook-celery skip {run_id} {step_id}",
            f"Fail the run: runbook-celery abort {run_id}",
        ]
    header = f"Step {step_id} of {what} failed" + (f": {details}." if details else ".")
    return f"step {step_id} failed", [header, *stderr]


def _failed(step: StepRecord) -> bool:
    return step.status == "failed" and not step.allowed_failure


def _failure(
    step: StepRecord | None, event: Mapping[str, str] | None = None
) -> tuple[str, list[str]]:
    """``exit code N, reason R, K attempts`` and the stderr tail, indented."""
    exit_code = step.exit_code if step else None
    reason = step.reason if step else None
    if event is not None:  # the event is what happened; the record may have moved on
        exit_code = _int(event.get("exit_code"), exit_code)
        reason = event.get("reason") or reason
    details = []
    if exit_code is not None:
        details.append(f"exit code {exit_code}")
    if reason:
        details.append(f"reason {reason}")
    if step is not None and step.attempts > 1:
        details.append(f"{step.attempts} attempts")
    tail = list(step.stderr_tail[-STDERR_LINES:]) if step else []
    lines = [f"  stderr (last {len(tail)} line{'' if len(tail) == 1 else 's'}):"] if tail else []
    lines += [f"    {_cut(line)}" for line in tail]
    return ", ".join(details), lines


def _cut(line: str) -> str:
    line = line.rstrip("\n")
    return line if len(line) <= LINE_CHARS else line[: LINE_CHARS - 3] + "..."


def _int(text: str | None, default: int | None) -> int | None:
    try:
        return int(text) if text not in (None, "") else default
    except ValueError:
        return default


def _seconds_between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    try:
        a = datetime.fromisoformat(start.replace("Z", "+00:00"))
        b = datetime.fromisoformat(end.replace("Z", "+00:00"))
    except ValueError:
        return None
    return max(0.0, (b - a).total_seconds())

"""Plain-text rendering of run records and events for the terminal."""

from __future__ import annotations

from datetime import datetime

from .runrecord import RunRecord


def duration(start: str | None, end: str | None) -> str:
    if not start:
        return "-"
    try:
        a = datetime.fromisoformat(start.replace("Z", "+00:00"))
        b = datetime.fromisoformat(end.replace("Z", "+00:00")) if end else None
    except ValueError:
        return "-"
    if b is None:
        return "…"
    secs = (b - a).total_seconds()
    return f"{secs:.2f}s" if secs < 60 else f"{int(secs // 60)}m{secs % 60:04.1f}s"


def record_table(record: RunRecord) -> str:
    """A run as a header and one row per step, with failure details at the end."""
    lines = [
        f"run       {record.id}",
        f"workflow  {record.workflow}",
        f"status    {record.status}",
        f"params    {', '.join(f'{k}={v}' for k, v in record.params.items()) or '-'}",
        f"duration  {duration(record.started_at or record.created_at, record.finished_at)}",
    ]
    if record.rerun_of:
        lines.append(f"rerun of  {record.rerun_of}")
    for name, value in record.outputs.items():
        lines.append(f"output    {name}={value}")
    lines.append("")
    labels = {sid: step.label(sid) for sid, step in record.steps.items()}
    width = max([4, *(len(s) for s in labels.values())])
    lines.append(f"{'STEP':<{width}}  {'STATUS':<10} {'EXIT':>4}  {'TRIES':>5}  {'DURATION':>9}")
    for sid, step in record.steps.items():
        code = "-" if step.exit_code is None else str(step.exit_code)
        lines.append(
            f"{labels[sid]:<{width}}  {step.status:<10} {code:>4}  {step.attempts:>5}  "
            f"{duration(step.started_at, step.finished_at):>9}"
        )
    for sid, step in record.steps.items():
        if step.status in ("failed", "cancelled") and not step.allowed_failure:
            lines.append("")
            lines.append(
                f"step {sid} {step.status}: reason={step.reason or '-'} "
                f"exit_code={'-' if step.exit_code is None else step.exit_code} "
                f"attempts={step.attempts}"
            )
            for line in step.stderr_tail[-20:]:
                lines.append(f"  | {line}")
    return "\n".join(lines)


def event_line(event: dict[str, str]) -> str:
    """One line per event, CI-friendly."""
    ts = event.get("ts", "")[11:23]
    parts = [ts, event.get("type", "?")]
    if event.get("step"):
        parts.append(event["step"])
    else:
        parts.append(event.get("workflow", ""))
    extra = []
    if event.get("attempt"):
        extra.append(f"attempt={event['attempt']}")
    if event.get("exit_code"):
        extra.append(f"exit_code={event['exit_code']}")
    if event.get("reason"):
        extra.append(f"reason={event['reason']}")
    if extra:
        parts.append(" ".join(extra))
    return "  ".join(p for p in parts if p)

"""Plain-text rendering of run records for the terminal, and the vocabulary every view shares.

The final table (``status``, the end of ``watch``/``--wait``), the live table (live.py) and
``runs`` use the same words for the same things: the columns ``STEP STATUS EXIT TRIES
DURATION`` in that order, one duration format, params as ``k=v, k=v``, a reused step
(``rerun --from-failed``) as ``succeeded (reused)``, and an exit code as ``128+N (SIGNAME)``
when a signal ended the step, whether the recorded code is the shell's (143) or the
process's (-15). JSON carries the same: ``exit_code`` 143 and ``"signal": "SIGTERM"``.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import click

from ..plan.runrecord import RunRecord, StepRecord

COLUMNS = ("STEP", "STATUS", "EXIT", "TRIES", "DURATION")
RIGHT_ALIGNED = frozenset({"EXIT", "TRIES", "DURATION"})
REUSED = "(reused)"

# rich style of each status word; the live table uses it as is, text views through click
STATUS_STYLE = {
    "queued": "dim",
    "pending": "dim",
    "waiting": "dim",
    "running": "bold blue",
    "retrying": "yellow",
    "paused": "yellow",
    "awaiting_approval": "bold magenta",
    "awaiting_decision": "bold magenta",
    "succeeded": "green",
    "failed": "bold red",
    "skipped": "dim",
    "cancelled": "yellow",
}


def style(text: str, status: str, colour: bool) -> str:
    """``text`` in the colour of ``status`` (see STATUS_STYLE) when ``colour``."""
    words = STATUS_STYLE.get(status, "").split()
    if not colour or not words:
        return text
    fg = next((w for w in words if w not in ("bold", "dim")), None)
    return click.style(text, fg=fg, bold="bold" in words or None, dim="dim" in words or None)


def seconds(value: float | None) -> str:
    """A duration as every view shows it: ``1.23s``, ``2m05s``, ``1h02m``."""
    if value is None:
        return "-"
    value = max(0.0, value)
    if value < 60:
        return f"{value:.2f}s"
    minutes, secs = divmod(int(value), 60)
    return f"{minutes}m{secs:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def _parse(iso: str | None) -> datetime | None:
    if not iso:
        return None
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return None


def elapsed(start: str | None, end: str | None, now: datetime | None = None) -> str:
    """From ``start`` to ``end``; to ``now`` while running (``…`` without a ``now``)."""
    a = _parse(start)
    if a is None:
        return "-"
    b = _parse(end) if end else now
    if b is None:
        return "…" if not end else "-"
    return seconds((b - a).total_seconds())


def params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items()) or "-"


def signal_of(code: int | None) -> str | None:
    """The signal that ended a step: a code of -N (the process was killed) or 128+N (the
    shell reports a child it ran that was killed so); None for an ordinary exit."""
    if code is None:
        return None
    number = -code if code < 0 else code - 128 if 128 < code < 128 + 65 else 0
    if number <= 0:
        return None
    try:
        return signal.Signals(number).name
    except ValueError:
        return None


def exit_code(code: int | None) -> int | None:
    """The shell's view of an exit code: a kill by signal N is 128+N (143 for SIGTERM)."""
    if code is not None and code < 0 and signal_of(code):
        return 128 - code
    return code


def exit_text(code: int | None) -> str:
    """``0``, ``3``, ``143 (SIGTERM)`` (for a recorded 143 or -15), or ``-``."""
    if code is None:
        return "-"
    name = signal_of(code)
    return f"{exit_code(code)} ({name})" if name else str(code)


def status_text(step: StepRecord) -> str:
    """A step's status word, with ``(reused)`` for one a rerun took from its original run."""
    return f"{step.status} {REUSED}" if step.reused else str(step.status)


def step_cells(sid: str, step: StepRecord, now: datetime | None = None) -> dict[str, str]:
    """One step as the table's cells, keyed by column name (the live table uses them too)."""
    # a reused step did not run in this run: its time was spent in the original one
    pending = step.reused or step.status == "pending"
    took = "-" if pending else elapsed(step.started_at, step.finished_at, now)
    return {
        "STEP": step.label(sid),
        "STATUS": status_text(step),
        "EXIT": exit_text(step.exit_code),
        "TRIES": str(step.attempts) if step.attempts else "-",
        "DURATION": took,
    }


def table(
    header: tuple[str, ...],
    rows: Sequence[tuple[str, ...]],
    statuses: list[str],
    *,
    right: frozenset[str] = RIGHT_ALIGNED,
    colour: bool = False,
    status_column: str = "STATUS",
) -> list[str]:
    """Rows under a header, each column as wide as its widest cell; the status cell coloured
    after padding, so colour codes never shift a column."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    at = header.index(status_column)
    out = []
    for n, row in enumerate([header, *rows]):
        cells = []
        for i, cell in enumerate(row):
            if header[i] in right:
                text = cell.rjust(widths[i])
            else:  # the last column is not padded: no trailing blanks
                text = cell if i == len(row) - 1 else cell.ljust(widths[i])
            if i == at and n > 0:
                text = style(text, statuses[n - 1], colour)
            cells.append(text)
        out.append("  ".join(cells))
    return out


def record_json(record: RunRecord) -> dict[str, Any]:
    """``record.to_dict()`` with each step's exit code as the views show it (see module)."""
    data = record.to_dict()
    for step in data.get("steps", {}).values():
        step.update(_shown_exit(step))
        # each attempt's code too; copies, as to_dict() shares these dicts with the record
        step["history"] = [{**entry, **_shown_exit(entry)} for entry in step.get("history", [])]
    return data


def _shown_exit(entry: dict[str, Any]) -> dict[str, Any]:
    if "exit_code" not in entry:
        return {}
    code = entry["exit_code"]
    return {"exit_code": exit_code(code), "signal": signal_of(code)}


def record_table(record: RunRecord, *, colour: bool = False) -> str:
    """A run as a header and one row per step, with failure details at the end."""
    lines = [
        f"run       {record.id}",
        f"workflow  {record.workflow}",
        f"status    {style(record.status, record.status, colour)}",
        f"params    {params_text(record.params)}",
        f"duration  {elapsed(record.started_at or record.created_at, record.finished_at)}",
    ]
    if record.rerun_of:
        reused = sum(1 for s in record.steps.values() if s.reused)
        lines.append(f"rerun of  {record.rerun_of} ({reused} reused)")
    for name, value in record.outputs.items():
        lines.append(f"output    {name}={value}")
    if record.parent_run:
        lines.append(f"parent    {record.parent_run} (step {record.parent_step})")
    for sid, child in record.children.items():
        lines.append(f"child     {child} (step {sid})")
    lines.append("")
    cells = [step_cells(sid, step) for sid, step in record.steps.items()]
    rows = [tuple(c[col] for col in COLUMNS) for c in cells]
    lines += table(COLUMNS, rows, [s.status for s in record.steps.values()], colour=colour)
    for sid, step in record.steps.items():
        if step.status in ("failed", "cancelled") and not step.allowed_failure:
            lines.append("")
            lines.append(
                f"step {sid} {step.status}: "  # plain: read and searched as one phrase
                f"reason={step.reason or '-'} exit_code={exit_text(step.exit_code)} "
                f"attempts={step.attempts}"
            )
            for line in step.stderr_tail[-20:]:
                lines.append(f"  | {line}")
    return "\n".join(lines)

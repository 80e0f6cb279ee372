"""Following a run in a terminal: a table updated in place, or one plain line per event.

In a terminal (stdout is a TTY) a rich ``Live`` table shows the final table's columns
(render.COLUMNS: step, status, exit, tries, duration), redrawn as events arrive and while
time passes, with the stderr tail of a failed step underneath. Anywhere else (CI logs,
pipes) it prints one line per event, so logs stay readable and greppable. Both wake up on
the run's event stream (XREAD BLOCK).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from ..client.render import (
    COLUMNS,
    RIGHT_ALIGNED,
    STATUS_STYLE,
    elapsed,
    exit_code,
    exit_text,
    params_text,
    signal_of,
    step_cells,
)
from ..store.events import Event, StepStatus
from ..store.events import follow as follow_events
from .queuewatch import warn_unconsumed
from .terminal import neutralise

if TYPE_CHECKING:
    from ..client.run import Run
    from ..plan.runrecord import RunRecord

REFRESH_PER_SECOND = 8
TAIL_LINES = 10  # stderr lines of a failed step shown under the live table

MARKS = {
    StepStatus.PENDING: "·",
    StepStatus.RUNNING: "▶",
    StepStatus.RETRYING: "↻",
    StepStatus.WAITING: "…",
    StepStatus.AWAITING_APPROVAL: "?",
    StepStatus.AWAITING_DECISION: "?",
    StepStatus.SUCCEEDED: "✔",
    StepStatus.FAILED: "✘",
    StepStatus.SKIPPED: "↷",
    StepStatus.CANCELLED: "■",
}


def is_terminal() -> bool:
    """True when stdout is an interactive terminal that can redraw in place."""
    return sys.stdout.isatty() and os.environ.get("TERM") != "dumb"


def follow_run(
    run: Run,
    echo: Callable[[str], None],
    *,
    console: Console | None = None,
    timeout: float | None = None,
    on_reconnect: Callable[[str], None] | None = None,
) -> RunRecord:
    """Show the run until it ends (live table on a terminal, else lines); return its record.

    With ``timeout`` (seconds) it returns by then, the run perhaps still going. Meanwhile a
    queue that pending steps wait on and no worker consumes is named on stderr. A lost
    connection to Redis is retried (``RUNBOOK_CLIENT_RECONNECT_SECONDS``); ``on_reconnect``
    is told when it is lost and back.
    """
    with warn_unconsumed(run):
        if console is not None or is_terminal():
            return live_table(run, console, timeout=timeout, on_reconnect=on_reconnect)
        return plain_lines(run, echo, timeout=timeout, on_reconnect=on_reconnect)


def plain_lines(
    run: Run,
    echo: Callable[[str], None],
    *,
    timeout: float | None = None,
    on_reconnect: Callable[[str], None] | None = None,
) -> RunRecord:
    """One line per event of the run, from its first event to its last (or the timeout)."""
    events = follow_events(
        run.id, settings=run.settings, timeout=timeout, on_reconnect=on_reconnect
    )
    for event in events:
        echo(event_line(event))
    return run.reconnector("reading the run", on_reconnect).call(run.status)


def live_table(
    run: Run,
    console: Console | None = None,
    *,
    timeout: float | None = None,
    on_reconnect: Callable[[str], None] | None = None,
) -> RunRecord:
    """Redraw the run's step table in place until the run ends (or the timeout)."""

    console = console or Console(force_terminal=True)
    patience = run.reconnector("reading the run", on_reconnect)
    view = RunView(patience.call(run.status))
    events = follow_events(
        run.id, settings=run.settings, timeout=timeout, on_reconnect=on_reconnect
    )
    # transient: the caller prints the final record (with the failed step's stderr) after
    with Live(view, console=console, transient=True, refresh_per_second=REFRESH_PER_SECOND) as live:
        for _event in events:
            view.record = patience.call(run.status)
            live.refresh()
    return patience.call(run.status)


def event_line(event: Event, *, with_run: bool = False) -> str:
    """One line per event, CI-friendly: time, type, step or workflow, then details."""
    parts = [event.ts[11:23], event.type]
    if with_run:
        parts.append(f"run={event.run_id}")
        parts.append(f"workflow={event.workflow}")
    parts.append(event.step or ("" if with_run else event.workflow))
    extra = []
    if event.attempt is not None:
        extra.append(f"attempt={event.attempt}")
    if event.exit_code is not None:
        extra.append(f"exit_code={exit_code(event.exit_code)}")
        if signal_of(event.exit_code):
            extra.append(f"signal={signal_of(event.exit_code)}")
    if event.reason:
        extra.append(f"reason={event.reason}")
    extra += [f"{k}={v}" for k, v in sorted(event.extra.items())]
    if extra:
        parts.append(" ".join(extra))
    return "  ".join(p for p in parts if p)


class RunView:
    """The live renderable; rich calls ``__rich__`` on every refresh, so durations tick."""

    def __init__(self, record: RunRecord) -> None:
        self.record = record

    def __rich__(self) -> RenderableType:

        rec = self.record
        now = datetime.now(UTC)
        header = Text.assemble(
            ("run ", "dim"),
            (rec.id, "bold"),
            ("  workflow ", "dim"),
            (rec.workflow, "bold"),
            ("  ", ""),
            (rec.status, STATUS_STYLE.get(rec.status, "")),
            ("  ", ""),
            (elapsed(rec.started_at or rec.created_at, rec.finished_at, now), "dim"),
            ("  params ", "dim"),
            (neutralise(params_text(rec.params), colour=False), ""),
        )
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, expand=False)
        for column in COLUMNS:  # the final table's columns, in its order
            right = column in RIGHT_ALIGNED
            table.add_column(column, justify="right" if right else "left", no_wrap=True)
        for sid, step in rec.steps.items():
            cells = step_cells(sid, step, now)
            style = STATUS_STYLE.get(step.status, "")
            status: Any = Text(f"{MARKS.get(step.status, '?')} {cells['STATUS']}", style=style)
            if step.status == StepStatus.RUNNING:
                status = Spinner("dots", text=Text(cells["STATUS"], style=style), style=style)
            # a label holds matrix values: anyone's text, so neither markup nor controls act
            row = [
                status if c == "STATUS" else Text(neutralise(cells[c], colour=False))
                for c in COLUMNS
            ]
            table.add_row(*row)
        parts: list[Any] = [header, table]
        for sid, step in rec.steps.items():
            if step.status == StepStatus.FAILED and not step.allowed_failure and step.stderr_tail:
                # rich styles text itself: every control of the step's, colours too, is shown
                tail_lines = step.stderr_tail[-TAIL_LINES:]
                tail = Text(neutralise("\n".join(tail_lines), colour=False))
                title = f"{sid} failed: exit {exit_text(step.exit_code)}, {step.reason or 'error'}"
                parts.append(Panel(tail, title=title, title_align="left", border_style="red"))
        return Group(*parts)

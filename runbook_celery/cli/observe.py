"""Observing runs from the command line: logs, events, runs, watch, graph (flower: dashboard.py).

Loaded by the ``cli`` group (``COMMAND_MODULES``) through ``COMMANDS``. Like the rest of the
CLI, commands raise RunbookError subclasses and ``cli.main`` turns them into messages and
exit codes.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from ..client.api import get_run
from ..client.render import exit_code, params_text, seconds, signal_of, table
from ..client.run import Run
from ..core.errors import EXIT_OK, EXIT_RUN_FAILED, InvalidOperation
from ..core.settings import get_settings
from ..definition.loader import load_workflow
from ..store import RunStore, events
from ..store.events import Event, EventType, RunStatus, StepStatus
from ..store.history import list_runs
from ..store.logs import Gap, LogReader
from ..store.reconnect import Reconnector
from ..store.redisconn import get_client
from .common import follow, show_record
from .graphview import GraphView, render
from .live import event_line, follow_run
from .options import timeout_option
from .runid import resolve_run_id, run_id_argument, run_id_option
from .terminal import echo as echo_untrusted
from .terminal import echo_stderr, is_terminal, neutralise, use_colour

PREFIX_COLOURS = ("cyan", "magenta", "yellow", "green", "blue", "bright_cyan", "bright_magenta")

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def _store() -> RunStore:

    settings = get_settings()
    return RunStore(get_client(settings), settings.prefix, settings.retention)


def _outcome_code(status: str | None) -> int:
    return EXIT_OK if status == RunStatus.SUCCEEDED else EXIT_RUN_FAILED


# ------------------------------------------------------------------------------ logs


@click.command()
@run_id_argument()
@click.argument("step", required=False)
@click.option(
    "-f",
    "--follow",
    is_flag=True,
    help="Stream new lines until the run ends; exit 0 if it succeeded.",
)
@click.option(
    "-t",
    "--timestamps",
    is_flag=True,
    help="Start each line with the UTC time Redis stored it (to the millisecond).",
)
@click.option("--failed", is_flag=True, help="Only the steps that failed.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="One JSON object per line: {step, stream, text, id, ts}; gaps as {step, dropped}.",
)
def logs(
    run_id: str, step: str | None, follow: bool, timestamps: bool, failed: bool, as_json: bool
) -> None:
    """Print the output of a run's steps (stderr lines go to stderr).

    Lines of several steps are prefixed with the step id. Logs last as long as the run
    (RUNBOOK_RETENTION); a step keeps its last RUNBOOK_LOG_LINES lines, and of those the
    newest RUNBOOK_LOG_BYTES bytes; what was dropped is said on stderr. On a terminal,
    escape sequences in the output are shown, not obeyed (colours are kept); redirected to
    a file or a pipe, the output is written byte for byte. A line's time (--timestamps) is
    when the worker's batch reached Redis, within 50 ms of the step printing it.
    """

    if failed and follow:
        raise InvalidOperation(
            "--failed shows the steps that have failed, and --follow waits for new lines: "
            "use one of them"
        )
    patience = Reconnector(get_settings().client_reconnect_seconds, "reading logs", echo_stderr)
    store = _store()
    reader = LogReader(store, run_id, [step] if step else None)
    if failed:
        chosen = _failed_steps(store, run_id, reader.steps)
        if not chosen:
            click.echo(f"no step of run {run_id} failed", err=True)
            return
        reader = LogReader(store, run_id, chosen)
    settings = get_settings()
    for item in reader.follow(reconnector=patience) if follow else reader.read():
        if isinstance(item, Gap):
            if as_json:
                click.echo(json.dumps({"step": item.step, "dropped": item.dropped}))
            else:
                click.echo(gap_notice(item, settings.log_lines, settings.log_bytes), err=True)
            continue
        if as_json:
            line = {"step": item.step, "stream": item.stream, "text": item.text}
            click.echo(json.dumps({**line, "id": item.id, "ts": stream_id_time(item.id)}))
            continue
        err = item.stream == "err"
        tty = is_terminal(err)
        text = neutralise(item.text) if tty else item.text
        if len(reader.steps) > 1:  # re-checked: a fanned-out step adds instances as it runs
            width = max(len(s) for s in reader.steps)
            prefix = item.step.ljust(width)
            if tty and use_colour(err):
                colour = PREFIX_COLOURS[reader.steps.index(item.step) % len(PREFIX_COLOURS)]
                prefix = click.style(prefix, fg=colour)
            text = f"{prefix} | {text}"
        if timestamps:
            text = f"{stream_id_time(item.id)} {text}"
        click.echo(text, err=err, color=True)  # color=True: click would strip colours in files
    if follow:
        raise SystemExit(_outcome_code(reader.status(patience)))


def _failed_steps(store: RunStore, run_id: str, steps: list[str]) -> list[str]:
    """Of ``steps``, those recorded failed (continue_on_error ones too: they did fail).

    A fanned-out step is named by its failed instances, not itself: chosen by name, a
    step brings all its instances, the ones that succeeded too.
    """
    hashes = store.step_hashes(run_id, steps)
    return [
        s
        for s in steps
        if hashes.get(s, {}).get("status") == StepStatus.FAILED
        and not json.loads(hashes[s].get("instances") or "[]")
    ]


def stream_id_time(stream_id: str) -> str:
    """The time in a Redis stream entry id (``<ms>-<seq>``) as ISO 8601 UTC, ms precision."""
    ms = int(stream_id.partition("-")[0])
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def gap_notice(gap: Gap, max_lines: int, max_bytes: int) -> str:
    """What ``logs`` says about lines a step printed that its log no longer holds; the caps
    are the worker's when it recorded them, else this machine's settings."""
    size = f" ({_size(gap.dropped_bytes)})" if gap.dropped_bytes else ""
    max_lines = gap.max_lines or max_lines
    max_bytes = gap.max_bytes or max_bytes
    return (
        f"[{gap.step}: {gap.dropped:,} lines{size} not shown: a step keeps its last "
        f"{max_lines:,} lines and {_size(max_bytes)} of log (RUNBOOK_LOG_LINES, "
        "RUNBOOK_LOG_BYTES)]"
    )


def _size(count: int) -> str:
    for unit, scale in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if count >= scale:
            return f"{count / scale:,.1f} {unit}"
    return f"{count:,} bytes"


# ------------------------------------------------------------------------------ events


@click.command("events")
@run_id_option("--run", "run_id", default=None, help="Only this run's events (default: all runs).")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new events (a run's end stops).")
@click.option(
    "--since",
    default="0",
    show_default=True,
    metavar="ID",
    help="Print events after this event id; 0 for all, $ for new ones only.",
)
@click.option(
    "--type",
    "types",
    multiple=True,
    type=click.Choice([t.value for t in EventType]),
    help="Only events of this type (repeatable).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per line.")
def events_command(
    run_id: str | None, follow: bool, since: str, types: tuple[str, ...], as_json: bool
) -> None:
    """Print events with their ids; resume after the last id seen with --since ID."""

    if follow:
        stream = events.follow(run_id, since, types=types or None, on_reconnect=echo_stderr)
    else:
        stream = events.read(run_id, since, types=types or None)
    for event in stream:
        if as_json:
            click.echo(json.dumps(event_json(event)))
        else:
            # a prompt, an operator's name or a reason may hold escape sequences
            echo_untrusted(f"{event.id}  {event_line(event, with_run=run_id is None)}")


def event_json(event: Event) -> dict[str, Any]:
    """``event.to_dict()`` with an exit code as every view shows it: 143 and its ``signal``."""

    data = event.to_dict()
    if event.exit_code is not None:
        data["exit_code"] = exit_code(event.exit_code)
        data["signal"] = signal_of(event.exit_code)
    return data


# ------------------------------------------------------------------------------ runs


@click.command()
@click.option("--workflow", default=None, help="Only runs of this workflow.")
@click.option(
    "--status",
    type=click.Choice([s.value for s in RunStatus]),
    default=None,
    help="Only runs in this status.",
)
@click.option("-n", "--limit", type=click.IntRange(min=1), default=20, show_default=True)
@json_option
def runs(workflow: str | None, status: str | None, limit: int, as_json: bool) -> None:
    """List recent runs, newest first (kept for RUNBOOK_RETENTION after they finish).

    Columns and formats are those of `status`: params as `k=v, k=v`, one duration format,
    status words coloured on a terminal (never when piped, or with NO_COLOR set). A rerun
    shows `(rerun)` after its status.
    """

    store = _store()
    found = list_runs(store, workflow=workflow, status=status, limit=limit)
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in found]))
        return
    if not found:
        click.echo("no runs", err=True)
        return
    reruns = _reruns(store, [r.id for r in found])
    rows = [
        (
            r.id,
            r.workflow,
            f"{r.status} (rerun)" if r.id in reruns else r.status,
            _clock(r.started_at or r.created_at),
            seconds(r.duration_s),
            params_text(r.params),
        )
        for r in found
    ]
    header = ("RUN", "WORKFLOW", "STATUS", "STARTED", "DURATION", "PARAMS")
    lines = table(header, rows, [r.status for r in found], colour=use_colour())
    echo_untrusted("\n".join(lines))  # params are anyone's text


def _reruns(store: RunStore, run_ids: list[str]) -> set[str]:
    """Which of the runs are reruns (one pipelined HGET each)."""
    pipe = store.r.pipeline(transaction=False)
    for run_id in run_ids:
        pipe.hget(store.keys.run(run_id), "rerun_of")
    return {run_id for run_id, of in zip(run_ids, pipe.execute(), strict=True) if of}


def _clock(iso: str | None) -> str:
    """``2026-01-02T03:04:05.678Z`` as ``2026-01-02 03:04:05Z``: short, still unambiguous."""
    return f"{iso[:10]} {iso[11:19]}Z" if iso and len(iso) >= 19 else "-"


# ------------------------------------------------------------------------------ watch


@click.command()
@run_id_argument()
@timeout_option
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print only the final record, as `status --json` does, when the run ends.",
)
def watch(run_id: str, timeout: float | None, as_json: bool) -> None:
    """Show a run live until it ends; exit 0 if it succeeded, 1 if not.

    On a terminal the step table updates in place; otherwise one line per event. The final
    table is the one `status` prints.
    """

    run = Run(run_id)
    run.status()  # RunNotFound (or exit 3, Redis unreachable) before anything is drawn
    if as_json:
        record = follow(run, None, timeout=timeout)  # exit 5 (WaitTimeout) if it runs out
        show_record(record, as_json=True)
        raise SystemExit(_outcome_code(record.status))
    record = follow_run(run, echo_untrusted, timeout=timeout, on_reconnect=echo_stderr)
    show_record(record, as_json=False)  # shown even when --timeout ran out: where it got to
    if timeout is not None and not record.finished:
        raise run.wait_timeout_error(timeout)
    raise SystemExit(_outcome_code(record.status))


# ------------------------------------------------------------------------------ graph


@click.command()
@click.argument("source", metavar="FILE|RUN_ID")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["mermaid", "dot"]),
    default="mermaid",
    show_default=True,
)
def graph(source: str, fmt: str) -> None:
    """Print a workflow's DAG, or a run's with each step coloured by its status."""

    path = Path(source)
    if path.exists() or path.suffix in (".yaml", ".yml"):
        wf = load_workflow(path).workflow
        view = GraphView(wf.name, {s.id: tuple(s.needs) for s in wf.steps})
    else:
        store = _store()
        source = resolve_run_id(store, source)
        record = get_run(source)
        snapshot = store.snapshot(source)
        status = {sid: s.status for sid, s in record.steps.items()}
        view = GraphView.from_snapshot(snapshot, status, run_id=record.id)
    click.echo(render(view, fmt), nl=False)


COMMANDS: list[click.Command] = [logs, events_command, runs, watch, graph]

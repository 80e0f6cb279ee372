"""What the command modules share: the exit code of a run's status, following a run to its
end and showing its final record (``trigger``, ``status``, ``watch``, ``rerun``), and what a
command that starts a run prints (``trigger``, ``rerun``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click

from ..client.render import record_json, record_table
from ..core.errors import EXIT_OK, EXIT_RUN_FAILED
from .live import follow_run
from .queuewatch import warn_unconsumed
from .terminal import echo as echo_untrusted
from .terminal import echo_stderr, use_colour


def exit_for(status: str) -> int:
    return EXIT_OK if status == "succeeded" else EXIT_RUN_FAILED


def show_record(record: Any, as_json: bool) -> None:
    """The final view of a run, shared by status, watch, trigger and rerun: one JSON object
    (every control character escaped), or the table, coloured on a terminal."""

    if as_json:
        click.echo(json.dumps(record_json(record)))
    else:
        echo_untrusted(record_table(record, colour=use_colour()))  # stderr tails are in it


def follow(run: Any, echo: Callable[[str], None] | None, timeout: float | None = None) -> Any:
    """Show the run until it ends (live table on a terminal, else one line per event).

    With ``timeout``, raises WaitTimeout (exit 5) when it runs out first; the run goes on.
    """

    if echo is None:
        with warn_unconsumed(run):
            return run.wait(timeout=timeout, on_reconnect=echo_stderr)

    record = follow_run(run, echo, timeout=timeout, on_reconnect=echo_stderr)
    if timeout is not None and not record.finished:
        raise run.wait_timeout_error(timeout)
    return record


def report_started(run: Any, wait: bool, timeout: float | None, as_json: bool) -> None:
    """What ``trigger`` and ``rerun`` print for the run they started: its id (or, with
    ``as_json``, its record) at once; with ``wait``, the run followed to its end, its final
    record, and the exit code of its status."""

    if not wait:
        if as_json:
            show_record(run.status(), as_json=True)
        else:
            click.echo(run.id)
        return
    if not as_json:
        click.echo(run.id)
    record = follow(run, None if as_json else echo_untrusted, timeout=timeout)
    show_record(record, as_json)
    raise SystemExit(exit_for(record.status))

"""The raw-Celery side of the benchmark: a hand-written Celery app and one Bash task.

It runs each command the way the floor does (``subprocess.run(["bash", "-c", cmd])``)
with the worker settings runbook-celery ships (acks_late, prefetch 1, reject on worker
lost, task events, JSON; copied from runbook_celery.engine.app at import), so a ratio between
the two sides is the cost of runbook-celery itself. Configured from the environment because
``celery -A bench_rawcelery worker`` imports it in a fresh process:

    BENCH_RAW_BROKER_URL, BENCH_RAW_BACKEND_URL, BENCH_RAW_QUEUE
"""

from __future__ import annotations

import os
import subprocess
from typing import Any

from celery import Celery, chain, chord, group
from celery.canvas import Signature

TASK_NAME = "bench.bash"

# Worker and delivery settings copied from the app runbook-celery ships, so that the two
# sides differ only in what runbook-celery adds (its task, store, canvas and client).
SHIPPED_SETTINGS = (
    "task_serializer",
    "result_serializer",
    "event_serializer",
    "accept_content",
    "result_accept_content",
    "task_acks_late",
    "worker_prefetch_multiplier",
    "task_reject_on_worker_lost",
    "task_acks_on_failure_or_timeout",
    "task_track_started",
    "result_extended",
    "result_chord_join_timeout",
    "broker_transport_options",
    "result_backend_transport_options",
    "visibility_timeout",
    "worker_soft_shutdown_timeout",
    "worker_cancel_long_running_tasks_on_connection_loss",
    "worker_send_task_events",
    "task_send_sent_event",
    "worker_hijack_root_logger",
    "broker_connection_retry_on_startup",
)


def shipped_settings() -> dict[str, Any]:
    """The settings above, as runbook_celery.engine.app configures them."""
    from runbook_celery.engine.app import make_app

    shipped = make_app().conf
    return {key: shipped[key] for key in SHIPPED_SETTINGS}


_shipped = shipped_settings()  # before our app, so that ours is the current app
app = Celery(
    "bench_rawcelery",
    broker=os.environ.get("BENCH_RAW_BROKER_URL", "redis://127.0.0.1:1/0"),
    backend=os.environ.get("BENCH_RAW_BACKEND_URL", "redis://127.0.0.1:1/1"),
)
app.conf.update(
    _shipped,
    task_default_queue=os.environ.get("BENCH_RAW_QUEUE", "bench-raw"),
    result_expires=3600,
)


class CommandFailed(Exception):
    """A step's Bash exited non-zero; Celery records FAILURE and stops the canvas."""


@app.task(name=TASK_NAME)
def bash(cmd: str) -> dict[str, Any]:
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, check=False)
    if proc.returncode != 0:
        raise CommandFailed(f"exit {proc.returncode}: {proc.stderr[-500:]!r}")
    return {"exit_code": 0, "stdout": proc.stdout.decode("utf-8", "replace")}


def step(cmd: str) -> Signature:
    return bash.si(cmd)


def chain_canvas(cmd: str, m: int) -> Signature:
    """M steps one after the other."""
    return chain(*(step(cmd) for _ in range(m))) if m > 1 else step(cmd)


def fan_canvas(cmd: str, width: int) -> Signature:
    """1 -> W -> 1: a source, W parallel steps, and a join (a chord)."""
    return chain(step(cmd), chord([step(cmd) for _ in range(width)], step(cmd)))


def lanes_canvas(cmd: str, lanes: int, per: int) -> Signature:
    """``lanes`` independent chains of ``per`` steps, started together (a group of chains)."""
    return group(chain_canvas(cmd, per) for _ in range(lanes))

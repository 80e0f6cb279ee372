"""The raw-Celery side of the benchmark: a hand-written Celery app and one Bash task.

It runs each command the way the floor does (``subprocess.run(["bash", "-c", cmd])``)
and ships the worker settings runbook-celery ships (acks_late, prefetch 1, reject on
worker lost, task events on; see runbook_celery/app.py), so a ratio between the two
sides is the cost of runbook-celery itself. Configured from the environment because
``celery -A bench_rawcelery worker`` imports it in a fresh process:

    BENCH_RAW_BROKER_URL, BENCH_RAW_BACKEND_URL, BENCH_RAW_QUEUE
"""

from __future__ import annotations

import os
import subprocess
from typing import Any

from celery import Celery, chain, chord
from celery.canvas import Signature

TASK_NAME = "bench.bash"

app = Celery(
    "bench_rawcelery",
    broker=os.environ.get("BENCH_RAW_BROKER_URL", "redis://127.0.0.1:1/0"),
    backend=os.environ.get("BENCH_RAW_BACKEND_URL", "redis://127.0.0.1:1/1"),
)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    event_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
    task_default_queue=os.environ.get("BENCH_RAW_QUEUE", "bench-raw"),
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_reject_on_worker_lost=True,
    task_acks_on_failure_or_timeout=True,
    task_track_started=True,
    result_extended=True,
    result_expires=3600,
    worker_send_task_events=True,
    task_send_sent_event=True,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    worker_soft_shutdown_timeout=0,
)


class CommandFailed(Exception):
    """A step's Bash exited non-zero; Celery records FAILURE and stops the canvas."""


@app.task(name=TASK_NAME, acks_late=True)
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

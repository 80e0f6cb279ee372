"""What Flower is told about each step: the truth, in Celery's own task states.

Flower builds its task list from the worker's task events only. Left alone, those say
SUCCESS for a step skipped by its condition, FAILURE for a cancelled one, STARTED for one
parked at an approval gate, and show a traceback of our task code for a failed script.
``StepRequest`` (Celery's documented hook for custom request handling) rewrites those events
as the worker sends them:

* a step recorded ``skipped`` or ``cancelled`` is REVOKED, with its reason;
* a step parked (approval, decision, paused run, a full slot) is RETRY, "waiting: why";
* a failed step's "traceback" is its exit code, reason and stderr tail.

Steps that never become tasks (the rest of a canvas after a failure) are announced as
REVOKED by ``announce_skipped``; a step that waited and was ended from outside its task (an
operator's decision, an approval timeout) by ``announce_ended``. Event ``uuid``s are step
task ids, ``<run>.<step>``.
"""

from __future__ import annotations

import ast
import logging
import re
from collections.abc import Iterable
from typing import Any

from celery import Celery
from celery.app.trace import LOG_RECEIVED, LOG_SUCCESS
from celery.exceptions import Ignore
from celery.worker.request import Request

log = logging.getLogger("runbook_celery.worker")

# The step task's result, as Celery's event carries it (its repr): the fields our task puts
# first, matched from the start so that no output value can pose as them.
_ENDED = re.compile(
    r"^\{'run_id': '[0-9a-f]+', 'step': '[A-Za-z0-9_\[\]-]+', "
    r"""'status': '(skipped|cancelled)', 'reason': ('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")"""
)
_FAILED = re.compile(r"^StepFailed\(['\"](?P<status>failed|cancelled)\b")


class StepFailed(Exception):
    """Raised so Celery records FAILURE and does not continue the canvas past this step.

    Its text is one line, what an operator needs: status, reason, exit code, stderr tail.
    One text argument, so it pickles as it is (Celery sends it between processes and
    stores it as the result; see ``step_failed`` to build one).
    """


def step_failed(
    status: str,
    step_id: str,
    reason: str | None,
    exit_code: int | None,
    stderr: Iterable[str] = (),
) -> StepFailed:
    tail = " | ".join(line.strip() for line in list(stderr)[-5:] if line.strip())
    text = f"{status} step {step_id}: reason {reason or '-'}, exit code {exit_code}"
    if tail:
        text += f"; stderr: {tail}"
    return StepFailed(text[:1000])


class Parked(Ignore):
    """The step waits (approval, decision, paused run, a full slot); its message is done.
    One text argument, so it pickles as it is."""

    @property
    def why(self) -> str:
        return str(self.args[0]) if self.args else "a gate"


class FannedOut(Ignore):
    """A fanned-out step of a canvas run: its instances are out and its join continues the
    canvas (canvasfanout). One text argument (what Flower shows as its result)."""

    @property
    def summary(self) -> str:
        return str(self.args[0]) if self.args else "fanned out"


class StepRequest(Request):
    """A step task's request: its events say what happened to the step."""

    def send_event(self, type: str, **fields: Any) -> None:
        if type == "task-succeeded":
            ended = _ENDED.match(str(fields.get("result", "")))
            if ended:  # recorded skipped or cancelled: not a success
                reason = ast.literal_eval(ended.group(2))  # a Python string literal, no more
                type, fields = "task-revoked", _revoked(ended.group(1), reason)
        elif type == "task-failed":
            failed = _FAILED.match(str(fields.get("exception", "")))
            if failed and failed.group("status") == "cancelled":
                type, fields = "task-revoked", _revoked("cancelled", fields.get("exception"))
            elif failed:  # the step's own report, not a Python traceback of our task code
                fields = {**fields, "traceback": _message(str(fields.get("exception", "")))}
        super().send_event(type, **fields)

    def on_failure(
        self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False
    ) -> Any:
        exc = getattr(exc_info.exception, "exc", exc_info.exception)
        if isinstance(exc, Parked):
            self.send_event("task-retried", exception=f"waiting: {exc.why}", traceback="")
        elif isinstance(exc, FannedOut):  # as a dynamic run's fanned-out step shows it
            self.send_event("task-succeeded", result=exc.summary, runtime=0)
        return super().on_failure(exc_info, send_failed_event, return_ok)


def announce_skipped(app: Celery, run_id: str, workflow: str, reasons: dict[str, str]) -> None:
    """REVOKED in Flower for steps recorded skipped that never became tasks (a canvas stops
    at a failed step). Monitoring only: a broker hiccup here never fails the step."""
    _announce(
        app,
        run_id,
        workflow,
        [(step_id, "task-revoked", _revoked("skipped", r)) for step_id, r in reasons.items()],
    )


def announce_ended(
    app: Celery, run_id: str, workflow: str, step_id: str, status: str, report: str
) -> None:
    """A step's end recorded outside its task (an operator's decision, a gate's timeout):
    its task last told Flower it was waiting (RETRY), so this says how it ended, in the
    states the step task's own events use. ``report``: the reason, or a failure's report."""
    if status == "succeeded":
        event, fields = "task-succeeded", {"result": report, "runtime": 0}
    elif status == "failed":
        event, fields = "task-failed", {"exception": report, "traceback": report}
    else:  # skipped, cancelled
        event, fields = "task-revoked", _revoked(status, report)
    _announce(app, run_id, workflow, [(step_id, event, fields)])


def _announce(
    app: Celery, run_id: str, workflow: str, events: list[tuple[str, str, dict[str, Any]]]
) -> None:
    """Send step task events from outside the task; best effort, as Celery's own are."""
    if not events:
        return
    try:
        with app.events.default_dispatcher() as dispatcher:
            for step_id, event, fields in events:
                dispatcher.send(
                    event,
                    uuid=f"{run_id}.{step_id}",
                    name=f"{workflow}.{step_id}",
                    root_id=run_id,
                    args=f"run={run_id} step={step_id}",
                    **fields,
                )
    except Exception as exc:
        log.info("could not tell Flower about steps of run %s: %s", run_id, exc)


def _revoked(status: str, reason: str | None) -> dict[str, Any]:
    return {
        "terminated": False,
        "expired": False,
        "signum": None,
        "exception": f"{status}: {reason or '-'}",
    }


def _message(exception_repr: str) -> str:
    m = re.match(r"^StepFailed\((['\"])(?P<text>.*)\1\)$", exception_repr, flags=re.S)
    return m.group("text") if m else exception_repr


class _OrdinaryChordFailure(logging.Filter):
    """Celery's Redis backend logs a chord whose member failed as an ERROR with a ChordError
    traceback. When that member is a step whose script failed, the step task has already
    logged it in one line (``Task.throws``): drop the second, noisier report."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Chord %r raised"):
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        return not (len(args) == 2 and "raised StepFailed(" in repr(args[1]))


def quiet_ordinary_chord_failures() -> None:
    """Install the filter on the logger Celery's Redis backend uses (idempotent)."""
    logger = logging.getLogger("celery.backends.redis")
    if not any(isinstance(f, _OrdinaryChordFailure) for f in logger.filters):
        logger.addFilter(_OrdinaryChordFailure())


class _RoutineTaskLines(logging.Filter):
    """Celery's INFO line for every task received and every task succeeded: at thousands of
    steps a minute they drown what matters, and the run store records each step anyway."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in (LOG_RECEIVED, LOG_SUCCESS)


def quiet_task_lines() -> None:
    """Drop those lines (``runbook-celery worker`` without ``--log-tasks``); failures, retries
    and warnings stay."""
    for name in ("celery.app.trace", "celery.worker.strategy"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RoutineTaskLines) for f in logger.filters):
            logger.addFilter(_RoutineTaskLines())

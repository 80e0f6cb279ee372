"""Errors users can act on.

Every error raised on purpose by runbook-celery derives from ``RunbookError`` and knows
the CLI exit code it maps to::

    RunbookError                      exit 1
    ├── DefinitionError               exit 2  one problem in a workflow file (file, line, path)
    ├── InvalidDefinition             exit 2  a list of DefinitionErrors for one or more files
    ├── InvalidParams                 exit 2  trigger params that do not fit the workflow
    ├── InvalidSetting                exit 2  a malformed RUNBOOK_* variable (each one named)
    ├── BackendUnavailable            exit 3  Redis / the broker did not answer
    ├── RunNotFound                   exit 4  no run with that id (or it expired)
    ├── InvalidOperation              exit 2  e.g. rerun --from an unknown step
    ├── UnsupportedSnapshot           exit 2  a run recorded by a newer runbook-celery
    ├── RunFailed                     exit 1  Run.wait(raise_on_failure=True) on a failed run
    └── WaitTimeout                   exit 5  Run.wait(timeout=...) / --timeout ran out; the
                                              run goes on
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..plan.runrecord import RunRecord

EXIT_OK = 0
EXIT_RUN_FAILED = 1
EXIT_INVALID = 2
EXIT_UNAVAILABLE = 3
EXIT_NOT_FOUND = 4
EXIT_WAIT_TIMEOUT = 5  # --timeout ran out before the run ended; the run goes on


class RunbookError(Exception):
    """Root of every error runbook-celery raises on purpose."""

    exit_code = EXIT_RUN_FAILED


@dataclass(frozen=True)
class Problem:
    """One problem in a definition: where it is and what is wrong."""

    file: str
    line: int | None
    message: str
    path: str = ""
    step_id: str | None = None

    def render(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        subject = f"{self.path}: " if self.path else ""
        return f"{where}: {subject}{self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "path": self.path,
            "step": self.step_id,
            "message": self.message,
        }


class DefinitionError(RunbookError):
    """A single problem in a workflow definition, pointing at file and line."""

    exit_code = EXIT_INVALID

    def __init__(
        self,
        message: str,
        *,
        file: str = "<workflow>",
        line: int | None = None,
        path: str = "",
        step_id: str | None = None,
    ) -> None:
        self.problem = Problem(file, line, message, path, step_id)
        super().__init__(self.problem.render())

    @property
    def file(self) -> str:
        return self.problem.file

    @property
    def line(self) -> int | None:
        return self.problem.line

    @property
    def step_id(self) -> str | None:
        return self.problem.step_id


class InvalidDefinition(RunbookError):
    """One or more problems found while validating definitions."""

    exit_code = EXIT_INVALID

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(p.render() for p in problems))


class InvalidParams(RunbookError):
    """Params given at trigger time that the workflow does not accept."""

    exit_code = EXIT_INVALID


class InvalidSetting(RunbookError):
    """One or more ``RUNBOOK_*`` settings are malformed; ``problems`` names each variable."""

    exit_code = EXIT_INVALID

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(f"invalid setting {p}" for p in problems))


class InvalidOperation(RunbookError):
    """An operation that cannot apply to this run (unknown step, wrong state)."""

    exit_code = EXIT_INVALID


class BackendUnavailable(RunbookError):
    """Redis or the broker could not be reached."""

    exit_code = EXIT_UNAVAILABLE


class UnsupportedSnapshot(RunbookError):
    """A run whose snapshot has a format version this code does not know (recorded by a newer
    runbook-celery): nothing here may interpret it, so it is refused, never guessed at."""

    exit_code = EXIT_INVALID

    def __init__(self, run_id: str, version: object, known: int) -> None:
        self.run_id = run_id
        self.version = version
        self.known = known
        super().__init__(
            f"run {run_id} was recorded with snapshot version {version!r}; this "
            f"runbook-celery reads versions up to {known}: upgrade it (workers first)"
        )


class RunNotFound(RunbookError):
    """No run with this id exists (never did, or it expired)."""

    exit_code = EXIT_NOT_FOUND

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"run {run_id!r} not found (never existed, or expired)")


class WaitTimeout(RunbookError):
    """Waiting for a run ran out of time before the run ended (the run itself goes on)."""

    exit_code = EXIT_WAIT_TIMEOUT

    def __init__(self, run_id: str, timeout: float, detail: str = "") -> None:
        self.run_id = run_id
        self.timeout = timeout
        super().__init__(f"run {run_id} did not finish within {timeout:g}s{detail}")


class RunFailed(RunbookError):
    """A run ended in a state other than succeeded; carries the final record."""

    def __init__(self, record: RunRecord) -> None:
        self.record = record
        failed = [sid for sid, s in record.steps.items() if s.status == "failed"]
        detail = f" (failed steps: {', '.join(failed)})" if failed else ""
        super().__init__(f"run {record.id} of {record.workflow} ended {record.status}{detail}")

"""A step of a workflow: what it runs, when, where, and how it is retried."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator

from .fieldtypes import (
    EnvName,
    EnvValue,
    ExitCode,
    MatrixKey,
    MatrixValue,
    QueueName,
    Scalar,
    StepId,
    StrictModel,
    matrix_shape,
)


class Retries(StrictModel):
    """How often a failed step is tried again, and how long to wait in between."""

    limit: int = Field(ge=0, le=100, description="Retries after the first attempt.")
    delay: float = Field(0, ge=0, le=86400, description="Seconds before the first retry.")
    backoff: float = Field(1, ge=1, le=100, description="Factor applied to the delay per retry.")
    max_delay: float | None = Field(None, ge=0, le=86400, description="Cap on the delay.")
    on_exit_codes: list[Annotated[int, Field(ge=0, le=255)]] | None = Field(
        None, description="Retry only these exit codes (default: any failure)."
    )

    def delay_for(self, retry_number: int) -> float:
        """Seconds to wait before retry ``retry_number`` (1-based)."""
        delay = self.delay * (self.backoff ** (retry_number - 1))
        return min(delay, self.max_delay) if self.max_delay is not None else delay


class Approval(StrictModel):
    """A gate: the step waits until a person approves (or rejects) it."""

    prompt: str = Field("Approve?", description="What the approver is asked.")
    timeout: float | None = Field(
        None, gt=0, le=30 * 86400, description="Seconds to wait before the step is rejected."
    )


class Step(StrictModel):
    """One node of the DAG: a Bash command or script, run after the steps it needs."""

    id: StepId = Field(description="Unique id of the step, used by `needs` and expressions.")
    name: str | None = Field(None, description="Human-readable name (defaults to the id).")
    run: str | None = Field(None, description="Bash, run as `bash -eo pipefail`.")
    script: str | None = Field(
        None, description="Path of a Bash script, relative to the workflow file; read at trigger."
    )
    needs: list[StepId] = Field(
        default_factory=list, description="Steps that must succeed before this one starts."
    )
    env: dict[EnvName, EnvValue] = Field(
        default_factory=dict, description="Environment for this step; may use expressions."
    )
    working_dir: str | None = Field(
        None, description="Directory the step runs in (relative paths are from the workflow file)."
    )
    retries: Retries | None = Field(None, description="Retry policy for this step.")
    timeout: float | None = Field(
        None, gt=0, le=7 * 86400, description="Seconds before the step is killed (reason timeout)."
    )
    kill_grace: float | None = Field(
        None, ge=0, le=3600, description="Seconds between SIGTERM and SIGKILL (default 10)."
    )
    continue_on_error: bool | Annotated[list[ExitCode], Field(min_length=1, max_length=256)] = (
        Field(
            False,
            description="Record a failure but let the run and dependents go on: true for any "
            "failure, or a list of the exit codes that may fail this way.",
        )
    )
    shell: str | None = Field(
        None,
        description="Interpreter of run/script: bash (default), sh, python, or a command "
        "with {0} for the script file ('perl {0}'); values reach non-Bash steps via env.",
    )
    output: EnvName | None = Field(
        None,
        description="Capture the step's stdout as the output NAME (Dagu's `output:`), "
        "trimmed, at most RUNBOOK_OUTPUT_LIMIT bytes: ${{ steps.ID.outputs.NAME }}.",
    )
    skip_on_exit_codes: Annotated[list[ExitCode], Field(min_length=1, max_length=256)] | None = (
        Field(
            None,
            description="Exit codes that record the step skipped (reason exit_code_skip), "
            "not failed; steps needing it are skipped too.",
        )
    )
    if_: str | None = Field(
        None,
        alias="if",
        description="Condition: success() (default), failure(), always(), cancelled(), "
        "with &&, ||, ! and == / != comparisons of params and needed outputs.",
    )
    matrix: Annotated[
        dict[MatrixKey, Annotated[list[MatrixValue], Field(min_length=1, max_length=256)]] | None,
        AfterValidator(matrix_shape),
    ] = Field(
        None,
        description="Fan out into one instance per combination of values, with GitHub's "
        "include and exclude.",
    )
    for_each: str | None = Field(
        None, description="Fan out over a JSON list: ${{ steps.ID.outputs.KEY }}."
    )
    max_parallel: int | None = Field(
        None, ge=1, le=1000, description="Most instances of a fanned-out step running at once."
    )
    queue: QueueName | None = Field(
        None,
        description="Celery queue; only workers started with -Q NAME run this step. Not a "
        "Redis key of kombu or Celery (unacked, celery-task-meta-..., ...), no ':'.",
    )
    approval: Approval | None = Field(None, description="Wait for `runbook-celery approve`.")
    on_failure: Literal["fail", "pause"] | None = Field(
        None, description="pause: wait in awaiting_decision instead of failing the run."
    )
    priority: int | None = Field(None, ge=0, le=9, description="Celery task priority (0-9).")
    uses: str | None = Field(
        None,
        description="Run another workflow file (relative to this one) as a child run, like "
        "GitHub's reusable workflows; the step's outputs are its workflow outputs. Not "
        "with run/script/shell, env, matrix/for_each or retries.",
    )
    with_: dict[EnvName, Scalar] | None = Field(
        None,
        alias="with",
        description="Params of the workflow `uses:` runs; values may use ${{ }} expressions "
        "(evaluated when the step starts, as values, never as code).",
    )

    @field_validator("needs", mode="before", json_schema_input_type=StepId | list[StepId])
    @classmethod
    def _needs_as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("run", "script", "uses")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty")
        return value

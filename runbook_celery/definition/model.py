"""The workflow definition format as pydantic models; the JSON Schema comes from here."""

from __future__ import annotations

import difflib
import math
import re
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from .notifyconfig import MAX_URLS, NotifyEvent, url_problem
from .queuenames import QUEUE_PATTERN, queue_name_problem

ID_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"


def _not_finite(value: float, hint: str) -> PydanticCustomError:
    return PydanticCustomError(
        "number_not_finite",
        "must be a finite number, not {value}{hint}",
        {"value": str(value), "hint": hint},
    )


def _finite_scalar(value: Any) -> Any:
    """YAML's `.nan` and `.inf` are floats; as a param, env or matrix value they are a slip."""
    if isinstance(value, float) and not math.isfinite(value):
        raise _not_finite(value, f"; quote it ('{value}') if you mean the text")
    return value


def _number(value: Any) -> Any:
    """A count or a duration: `timeout: true` is not 1, and `.nan`/`.inf` are no duration."""
    if isinstance(value, bool):
        raise PydanticCustomError(
            "number_not_bool",
            "must be a number, not {value} (booleans are not numbers here)",
            {"value": "true" if value else "false"},
        )
    try:
        parsed = float(value) if isinstance(value, str | float) else 0.0
    except ValueError:
        return value  # pydantic says it is not a number
    if not math.isfinite(parsed):
        raise _not_finite(parsed, "")
    return value


Scalar = Annotated[
    str | int | float | bool,
    BeforeValidator(_finite_scalar, json_schema_input_type=str | int | float | bool),
]
# A `type: number` param: a finite decimal, so that no character of it means anything to Bash
# (arithmetic included: a value such as a[$(cmd)] runs the command when Bash evaluates it).
NUMBER_PATTERN = r"^-?[0-9]+(\.[0-9]+)?$"


def _scalar_to_str(value: Any) -> Any:
    """YAML gives `1.0`, `true` and `3` as numbers; environment values are text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(_finite_scalar(value))
    return value


EnvValue = Annotated[
    str, BeforeValidator(_scalar_to_str, json_schema_input_type=str | int | float | bool)
]
EnvName = Annotated[str, Field(pattern=ENV_NAME_PATTERN)]
StepId = Annotated[str, Field(pattern=ID_PATTERN)]
ExitCode = Annotated[int, BeforeValidator(_number), Field(ge=0, le=255)]
# GitHub's matrix keys may contain '-' (python-version); `include`/`exclude` are lists of objects
MatrixKey = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")]


def _matrix_value(value: Any) -> Any:
    """A matrix value: a scalar (finite) or an object; never a list."""
    if isinstance(value, dict):
        return value
    if isinstance(value, str | int | float | bool):
        return _finite_scalar(value)
    raise PydanticCustomError(
        "matrix_value",
        "must be text, a number, a boolean or a mapping, not {kind}",
        {"kind": type(value).__name__},
    )


MatrixValue = Annotated[
    Any,
    BeforeValidator(
        _matrix_value, json_schema_input_type=str | int | float | bool | dict[str, Any]
    ),
]


def _matrix_shape(matrix: dict[str, list[Any]] | None) -> dict[str, list[Any]] | None:
    """``include``/``exclude`` hold objects (key: value entries); the other keys' values are
    scalars or objects, never lists (GitHub's shape)."""
    if matrix is None:
        return None
    for key, values in matrix.items():
        for value in values:
            if key in ("include", "exclude") and (not isinstance(value, dict) or not value):
                raise PydanticCustomError(
                    "matrix_entry",
                    "each '{key}' entry must be a non-empty mapping such as "
                    "{{os: linux, python-version: '3.12'}}",
                    {"key": key},
                )
            if isinstance(value, dict):
                for inner in value:
                    if not isinstance(inner, str):
                        raise PydanticCustomError(
                            "matrix_entry", "matrix object keys must be text", {}
                        )
    return matrix


def _safe_queue(value: str) -> str:
    """A queue must not share a Redis key with the broker's bookkeeping or ours (queuenames)."""
    if problem := queue_name_problem(value):
        raise PydanticCustomError("queue_name", problem)
    return value


QueueName = Annotated[
    str,
    AfterValidator(_safe_queue),
    WithJsonSchema({"type": "string", "pattern": QUEUE_PATTERN}),
]


def _numeric_shape(annotation: Any) -> str | None:
    """``"number"`` for an int/float key (optional or not), ``"list"`` for a list of them."""
    if get_origin(annotation) is Annotated:
        return _numeric_shape(get_args(annotation)[0])
    if annotation in (int, float):
        return "number"
    if get_origin(annotation) in (Union, types.UnionType):
        shapes = {_numeric_shape(a) for a in get_args(annotation) if a is not type(None)}
        return shapes.pop() if len(shapes) == 1 else None
    if get_origin(annotation) is list and _numeric_shape(get_args(annotation)[0]) == "number":
        return "list"
    return None


NUL_MESSAGE = (
    "contains a NUL character (\\0), which Bash cannot take in a command, an argument or "
    "an environment variable; remove it"
)


def _nul_inside(value: Any, where: str = "") -> str | None:
    """Where in ``value`` (a text, or a map or list of them) a NUL character is, or None."""
    if isinstance(value, str):
        return where if "\x00" in value else None
    items: list[tuple[Any, Any]] = []
    if isinstance(value, dict):
        items = list(value.items())
        for key in value:
            if isinstance(key, str) and "\x00" in key:
                return f"{where}key {key!r}"
    elif isinstance(value, list | tuple):
        items = list(enumerate(value))
    for key, item in items:
        found = _nul_inside(item, f"{where}[{key!r}]" if isinstance(key, int) else f"{where}.{key}")
        if found is not None:
            return found
    return None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False, populate_by_name=True)

    @field_validator("*", mode="before")
    @classmethod
    def _plain_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """Every int/float key of a definition refuses `true`, `.nan` and `.inf`.

        Pydantic's lax mode would take `timeout: true` as 1 second, and `.nan` fails its
        range check with a message about the range. One validator on the base model keeps
        the numeric fields plain `int`/`float` (and the JSON Schema unchanged).
        """
        field = cls.model_fields.get(info.field_name or "")
        shape = _numeric_shape(field.annotation) if field else None
        if shape == "number":
            return _number(value)
        if shape == "list" and isinstance(value, list):
            return [_number(v) for v in value]
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        """No text of a definition may hold NUL: it would only fail later, at spawn time.

        Files are checked with a line for each value by the YAML loader; this covers
        definitions built in Python.
        """
        where = _nul_inside(value)
        if where is not None:
            inside = f"{where.lstrip('.')}: " if where else ""
            raise PydanticCustomError("nul_character", inside + NUL_MESSAGE)
        return value


ParamType = Literal["string", "number", "boolean", "choice"]


class Param(_Strict):
    """A trigger-time input: its type, default and what it is for.

    Written in full, or as the shorthand ``NAME: default`` (a string param with a default).
    """

    default: Scalar | None = Field(
        None, description="Value when the trigger does not give one (omit with required: true)."
    )
    type: ParamType = Field(
        "string",
        description="string (any text), number (a decimal such as 3, -1 or 2.5), boolean "
        "(true or false) or choice (one of options). Checked when a run is triggered.",
    )
    options: list[Scalar] | None = Field(
        None, min_length=1, max_length=1000, description="The allowed values of a choice param."
    )
    description: str | None = Field(None, description="What the param is for.")
    required: bool = Field(False, description="The trigger must give a value (no default).")

    @model_validator(mode="after")
    def _consistent(self) -> Param:
        problem = param_declaration_problem(self)
        if problem is not None:
            raise PydanticCustomError("param", problem)
        return self


def param_declaration_problem(param: Param) -> str | None:
    """What is inconsistent in a param declaration (its default checked against its type)."""
    if param.type == "choice" and not param.options:
        return "a choice param needs options: [...]"
    if param.type != "choice" and param.options is not None:
        return f"options belong to type: choice (this param is type: {param.type})"
    if param.required and param.default is not None:
        return "a required param has no default: drop one of required and default"
    if param.default is None:
        if not param.required and param.type in ("number", "choice"):
            return f"a {param.type} param needs a default or required: true"
        return None
    problem = param_value_problem(param, param.default)
    return None if problem is None else f"default {problem}"


def param_value_problem(param: Param, value: Any) -> str | None:
    """Why ``value`` does not fit the declaration, or None."""
    if param.type == "number":
        if param_text(param, value) is None:
            return f"must be a decimal number such as 3, -1 or 2.5 (got {value!r})"
    elif param.type == "boolean":
        if param_text(param, value) is None:
            return f"must be true or false (got {value!r})"
    elif param.type == "choice":
        allowed = [_text_of(o) for o in param.options or []]
        if _text_of(value) not in allowed:
            return f"must be one of {', '.join(allowed)} (got {value!r})"
    return None


def param_text(param: Param, value: Any) -> str | None:
    """The text a step sees for a value of this param, or None if the value does not fit."""
    if param.type == "number":
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            return None
        text = _number_text(value)
        return text if text is not None and re.fullmatch(NUMBER_PATTERN, text) else None
    if param.type == "boolean":
        if isinstance(value, bool):
            return "true" if value else "false"
        return value if value in ("true", "false") else None
    return _text_of(value)


def _number_text(value: str | int | float) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return repr(value) if "e" not in repr(value) else f"{value:f}"
    return str(value)


def _text_of(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _param_shorthand(value: Any) -> Any:
    """``NAME: default`` means a string param with that default."""
    if isinstance(value, str | int | float | bool):
        return {"default": value}
    if isinstance(value, dict | Param):
        return value
    raise PydanticCustomError(
        "param",
        "must be a default value (string, number or boolean) or a mapping of "
        "default/type/options/description/required",
    )


ParamDeclaration = Annotated[
    Param, BeforeValidator(_param_shorthand, json_schema_input_type=Scalar | Param)
]


class Retries(_Strict):
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


class Approval(_Strict):
    """A gate: the step waits until a person approves (or rejects) it."""

    prompt: str = Field("Approve?", description="What the approver is asked.")
    timeout: float | None = Field(
        None, gt=0, le=30 * 86400, description="Seconds to wait before the step is rejected."
    )


class Concurrency(_Strict):
    """At most ``limit`` active runs per group key (computed at trigger time)."""

    group: str = Field(min_length=1, description="Group key; may use ${{ params.X }}.")
    limit: int = Field(1, ge=1, le=1000)
    on_conflict: Literal["queue", "cancel_running", "skip"] = "queue"


class Defaults(_Strict):
    """Workflow-wide defaults for step keys."""

    retries: Retries | None = None
    timeout: float | None = Field(None, gt=0, le=7 * 86400)
    kill_grace: float | None = Field(None, ge=0, le=3600)
    on_failure: Literal["fail", "pause"] | None = None
    shell: str | None = Field(
        None,
        description="Interpreter of every step: bash (default), sh, python, or a command "
        "with {0} for the script file ('perl {0}').",
    )


def _usable_notify_url(value: str) -> str:
    """An apprise URL (parsed without network); ``${{ secrets.NAME }}`` for secret parts."""
    if problem := url_problem(value):
        raise PydanticCustomError("notify_url", problem)
    return value


NotifyUrl = Annotated[str, Field(min_length=1), AfterValidator(_usable_notify_url)]


def _one_or_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _known_notify_event(value: Any) -> Any:
    """An event name, with a did-you-mean for a typo."""
    names = [e.value for e in NotifyEvent]
    if isinstance(value, str) and value not in names:
        hint = difflib.get_close_matches(value, names, n=1)
        raise PydanticCustomError(
            "notify_event",
            "unknown event {value}{hint}; notify can be on: {names}",
            {
                "value": repr(value),
                "hint": f" (did you mean {hint[0]!r}?)" if hint else "",
                "names": ", ".join(names),
            },
        )
    return value


NotifyOn = Annotated[NotifyEvent, BeforeValidator(_known_notify_event)]


class Notify(_Strict):
    """One notification rule: on these events of a run, send to these URLs (apprise)."""

    on: Annotated[
        list[NotifyOn],
        BeforeValidator(_one_or_list, json_schema_input_type=NotifyEvent | list[NotifyEvent]),
    ] = Field(
        default_factory=lambda: [NotifyEvent.FAILED],
        min_length=1,
        description="Events to notify: started, succeeded, failed, cancelled, skipped, "
        "awaiting_approval, awaiting_decision, step_failed (default: failed).",
    )
    urls: Annotated[
        list[NotifyUrl],
        BeforeValidator(_one_or_list, json_schema_input_type=NotifyUrl | list[NotifyUrl]),
    ] = Field(
        min_length=1,
        max_length=MAX_URLS,
        description="apprise URLs (json://host/path, slack://..., mailto://...); write "
        "secret parts as ${{ secrets.NAME }}.",
    )


class Step(_Strict):
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
        AfterValidator(_matrix_shape),
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


class Workflow(_Strict):
    """A workflow file: params, shared env and a DAG of steps."""

    name: StepId = Field(description="Workflow name; shown in Flower as `<name>.<step>`.")
    description: str | None = None
    params: dict[EnvName, ParamDeclaration] = Field(
        default_factory=dict,
        description="Parameters: NAME: default, or NAME: {default, type, options, description, "
        "required}; given at trigger and checked against the declaration.",
    )
    outputs: dict[EnvName, str] = Field(
        default_factory=dict,
        description="The workflow's result: NAME: an expression over steps' outputs and "
        "statuses, e.g. ${{ steps.build.outputs.version }}; shown once the run has ended.",
    )
    env: dict[EnvName, EnvValue] = Field(
        default_factory=dict, description="Environment for every step; may use expressions."
    )
    defaults: Defaults | None = Field(None, description="Defaults for retries/timeout/kill_grace.")
    schedule: str | None = Field(
        None,
        description="Cron expression (5 fields, e.g. '*/15 * * * *', Vixie cron semantics), "
        "a macro such as '@daily', or '@every 30s': `runbook-celery beat` triggers the "
        "workflow on it.",
    )
    timezone: str | None = Field(
        None,
        description="IANA time zone of `schedule` (e.g. 'Europe/Berlin'; default UTC); "
        "DST changes are followed as cron does.",
    )
    overlap: Literal["skip", "allow"] = Field(
        "skip", description="When a scheduled run is due while the previous one still runs."
    )
    timeout: float | None = Field(
        None, gt=0, le=30 * 86400, description="Seconds the whole run may take."
    )
    secrets: list[EnvName] = Field(
        default_factory=list,
        description="Worker environment variables whose values are masked as *** in logs, "
        "events, outputs and Flower.",
    )
    concurrency: Concurrency | None = Field(
        None, description="Limit active runs per group (queue, cancel_running or skip)."
    )
    max_active_steps: int | None = Field(
        None, ge=1, le=10_000, description="Most steps of one run executing at once."
    )
    priority: int | None = Field(None, ge=0, le=9, description="Default task priority (0-9).")
    notify: list[Notify] = Field(
        default_factory=list,
        max_length=20,
        description="Notifications: [{on: [failed, ...], urls: [...]}], sent by the workers "
        "(apprise URLs; secret parts as ${{ secrets.NAME }}).",
    )
    steps: list[Step] = Field(min_length=1, max_length=10_000, description="The steps of the DAG.")

    @property
    def step_ids(self) -> list[str]:
        return [s.id for s in self.steps]

    def step(self, step_id: str) -> Step:
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(step_id)

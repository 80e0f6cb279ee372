"""The workflow definition format as pydantic models; the JSON Schema comes from here.

The workflow and its params, defaults, concurrency and notification rules live here; a
step in ``stepmodel.py``; the field types they share in ``fieldtypes.py``.
"""

from __future__ import annotations

import difflib
import math
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, model_validator
from pydantic_core import PydanticCustomError

from .fieldtypes import (
    NUMBER_PATTERN,
    EnvName,
    EnvValue,
    Scalar,
    StepId,
    StrictModel,
)
from .notifyconfig import MAX_URLS, NotifyEvent, url_problem
from .stepmodel import Retries, Step

# Step and Retries are documented as this module's (docs/definition-reference.md)
__all__ = [
    "Concurrency",
    "Defaults",
    "Notify",
    "Param",
    "ParamDeclaration",
    "ParamType",
    "Retries",
    "Step",
    "Workflow",
    "param_declaration_problem",
    "param_text",
    "param_value_problem",
]


ParamType = Literal["string", "number", "boolean", "choice"]


class Param(StrictModel):
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


class Concurrency(StrictModel):
    """At most ``limit`` active runs per group key (computed at trigger time)."""

    group: str = Field(min_length=1, description="Group key; may use ${{ params.X }}.")
    limit: int = Field(1, ge=1, le=1000)
    on_conflict: Literal["queue", "cancel_running", "skip"] = "queue"


class Defaults(StrictModel):
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


class Notify(StrictModel):
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


class Workflow(StrictModel):
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

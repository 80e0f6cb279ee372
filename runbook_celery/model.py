"""The workflow definition format as pydantic models; the JSON Schema comes from here."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

ID_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"

Scalar = str | int | float | bool


def _scalar_to_str(value: Any) -> Any:
    """YAML gives `1.0`, `true` and `3` as numbers; environment values are text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


EnvValue = Annotated[str, BeforeValidator(_scalar_to_str)]
EnvName = Annotated[str, Field(pattern=ENV_NAME_PATTERN)]
StepId = Annotated[str, Field(pattern=ID_PATTERN)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


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

    @field_validator("needs", mode="before")
    @classmethod
    def _needs_as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("run", "script")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty")
        return value


class Workflow(_Strict):
    """A workflow file: params, shared env and a DAG of steps."""

    name: StepId = Field(description="Workflow name; shown in Flower as `<name>.<step>`.")
    description: str | None = None
    params: dict[EnvName, Scalar] = Field(
        default_factory=dict, description="Parameters with their defaults; override at trigger."
    )
    env: dict[EnvName, EnvValue] = Field(
        default_factory=dict, description="Environment for every step; may use expressions."
    )
    steps: list[Step] = Field(min_length=1, description="The steps of the DAG.")

    @property
    def step_ids(self) -> list[str]:
        return [s.id for s in self.steps]

    def step(self, step_id: str) -> Step:
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(step_id)

"""The field types shared by the definition's models, and their strict base model.

Identifiers, environment names and values, scalars, exit codes, matrix keys and values,
queue names; ``StrictModel`` refuses unknown keys, booleans as numbers, ``.nan``/``.inf``
and NUL characters in every model of a definition.
"""

from __future__ import annotations

import math
import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)
from pydantic_core import PydanticCustomError

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


def matrix_shape(matrix: dict[str, list[Any]] | None) -> dict[str, list[Any]] | None:
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


class StrictModel(BaseModel):
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

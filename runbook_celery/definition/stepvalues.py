"""What a step's values and interpreter are, as validation and the compiler both see them:
its shell, the references Bash arithmetic may use, its matrix as the text a step sees."""

from __future__ import annotations

import re
from typing import Any

from ..core.settings import get_settings
from . import expressions as ex
from . import matrix, shells
from .fieldtypes import NUMBER_PATTERN
from .model import Workflow
from .stepmodel import Step


def step_shell(wf: Workflow, step: Step) -> str:
    """The interpreter of a step: its own ``shell``, the workflow's default, else bash."""
    if step.shell is not None:
        return step.shell
    if wf.defaults is not None and wf.defaults.shell is not None:
        return wf.defaults.shell
    return shells.BASH


def is_numeric(node: ex.Node, numeric: frozenset[str]) -> bool:
    """An expression Bash arithmetic may use: a single reference that is always a number."""
    return isinstance(node, ex.Ref) and node.text() in numeric


def numeric_refs(wf: Workflow, step: Step | None) -> frozenset[str]:
    """References whose value is always a decimal number, so Bash arithmetic may use them:
    params of type number (checked at trigger) and matrix keys whose every value is one."""
    out = {f"params.{name}" for name, param in wf.params.items() if param.type == "number"}
    if step is not None and step.matrix:
        try:
            combos = matrix.expand(matrix_text(step.matrix), get_settings().max_instances)
        except matrix.TooManyCombinations:
            combos = []
        for key in matrix.keys(step.matrix):
            if combos and all(key in c and _is_number(c[key]) for c in combos):
                out.add(f"matrix.{key}")
    return frozenset(out)


def matrix_text(declared: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """A matrix with each scalar as the text a step sees (as env values are), objects kept
    as objects of text: validation and the worker expand and compare the same values."""
    return {k: [_value_text(v) for v in vs] for k, vs in declared.items()}


def _value_text(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _value_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_value_text(v) for v in value]
    return ex.to_text(value)


def _is_number(value: object) -> bool:
    return not isinstance(value, bool) and bool(re.fullmatch(NUMBER_PATTERN, ex.to_text(value)))

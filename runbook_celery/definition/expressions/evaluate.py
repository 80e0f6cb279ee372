"""Evaluating an expression's tree with the values of a run."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .functions import call_function, loads_or_none, to_text, truthy
from .parser import find
from .tree import Attr, Call, Func, Literal, Node, Not, Ref


def evaluate(
    node: Node, resolve: Callable[[Ref], Any], status: Mapping[str, bool] | None = None
) -> Any:
    """Evaluate with ``resolve`` for references and ``status`` for the functions."""
    if isinstance(node, Literal):
        return node.value
    if isinstance(node, Ref):
        return resolve(node)
    if isinstance(node, Call):
        return bool((status or {}).get(node.name, False))
    if isinstance(node, Not):
        return not truthy(evaluate(node.operand, resolve, status))
    if isinstance(node, Func):
        return call_function(node.name, [evaluate(a, resolve, status) for a in node.args])
    if isinstance(node, Attr):
        value = evaluate(node.operand, resolve, status)
        if isinstance(value, str):  # an output holding JSON: GitHub derefs objects only
            value = loads_or_none(value)
        if isinstance(value, dict):
            for key, item in value.items():  # GitHub: property names ignore case
                if key.lower() == node.name.lower():
                    return item
        return None
    if node.op == "&&":
        return truthy(evaluate(node.left, resolve, status)) and truthy(
            evaluate(node.right, resolve, status)
        )
    if node.op == "||":
        return truthy(evaluate(node.left, resolve, status)) or truthy(
            evaluate(node.right, resolve, status)
        )
    left = to_text(evaluate(node.left, resolve, status))
    right = to_text(evaluate(node.right, resolve, status))
    return (left == right) if node.op == "==" else (left != right)


def substitute(template: str, resolve: Callable[[Ref], Any]) -> str:
    """A text with each ``${{ }}`` replaced by its value's text (env values, outputs)."""
    occurrences = find(template)
    if not occurrences:
        return template
    parts, pos = [], 0
    for occ in occurrences:
        parts.append(template[pos : occ.start])
        parts.append(to_text(evaluate(occ.node, resolve)))
        pos = occ.end
    parts.append(template[pos:])
    return "".join(parts)

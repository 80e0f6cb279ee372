"""The expression language's tree: its nodes and errors, and the walks over a tree."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class ExpressionError(ValueError):
    """A malformed expression; the message says what is wrong."""


@dataclass(frozen=True)
class Ref:
    """A reference to a value: ``params.x``, ``steps.a.outputs.k``, ``matrix.k``, ``item``."""

    kind: str  # params | outputs | all_outputs | status | run_status | needs | matrix | item
    name: str = ""
    key: str = ""

    def text(self) -> str:
        if self.kind == "params":
            return f"params.{self.name}"
        if self.kind == "outputs":
            return f"steps.{self.name}.outputs.{self.key}"
        if self.kind == "all_outputs":
            return f"steps.{self.name}.outputs"
        if self.kind == "status":
            return f"steps.{self.name}.status"
        if self.kind == "run_status":
            return "run.status"
        if self.kind == "needs":
            return "needs"
        if self.kind == "matrix":
            return f"matrix.{self.name}"
        return "item"


@dataclass(frozen=True)
class Literal:
    value: Any


@dataclass(frozen=True)
class Call:
    name: str


@dataclass(frozen=True)
class Func:
    """A value function: ``contains(a, b)``, ``toJSON(x)``, ..."""

    name: str
    args: tuple[Node, ...]


@dataclass(frozen=True)
class Attr:
    """A property of an object value: ``fromJSON(x).name``."""

    operand: Node
    name: str


@dataclass(frozen=True)
class Not:
    operand: Node


@dataclass(frozen=True)
class BinOp:
    op: str  # && || == !=
    left: Node
    right: Node


Node = Ref | Literal | Call | Func | Attr | Not | BinOp


class EvaluationError(ExpressionError):
    """An expression that parsed but cannot be evaluated with these values (bad JSON, a
    result too large); the step using it fails with reason ``bad_input``."""


def refs(node: Node) -> list[Ref]:
    """Every reference in an expression, in order."""
    if isinstance(node, Ref):
        return [node]
    if isinstance(node, Not | Attr):
        return refs(node.operand)
    if isinstance(node, BinOp):
        return refs(node.left) + refs(node.right)
    if isinstance(node, Func):
        return [r for arg in node.args for r in refs(arg)]
    return []


def names_a_status(node: Node) -> bool:
    """Whether an expression reads ``steps.ID.status`` or ``run.status``: such an ``if:``
    decides by itself and does not imply ``success()``."""
    return any(r.kind in ("status", "run_status", "needs") for r in refs(node))


def calls(node: Node) -> set[str]:
    """Status functions used by an expression."""
    if isinstance(node, Call):
        return {node.name}
    if isinstance(node, Not | Attr):
        return calls(node.operand)
    if isinstance(node, BinOp):
        return calls(node.left) | calls(node.right)
    if isinstance(node, Func):
        return set().union(*(calls(arg) for arg in node.args))
    return set()

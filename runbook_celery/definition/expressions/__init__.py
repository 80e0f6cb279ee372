"""The ``${{ ... }}`` expression language: parsing, references and evaluation.

The language's one import (``from ..definition import expressions as ex``): the names
below are its interface. Each part lives in a module of its own:

* ``parser.py``: the grammar, finding ``${{ }}`` in a text, tokens and the parser.
* ``tree.py``: the nodes of a parsed expression, its errors, and the walks over a tree
  (``refs``, ``calls``, ``names_a_status``).
* ``functions.py``: GitHub Actions' value functions, and how a value becomes text.
* ``evaluate.py``: evaluating a tree with a run's values, and substituting them in a text.

Expressions are never pasted into shell text: see ``compile.rewrite_command``.
"""

from __future__ import annotations

from .evaluate import evaluate, substitute
from .functions import MAX_VALUE_CHARS, to_text, truthy
from .parser import (
    CLOSE,
    FUNCTIONS,
    MAX_NESTING,
    MAX_TOKENS,
    OPEN,
    VALUE_FUNCTIONS,
    Occurrence,
    find,
    parse,
    parse_condition,
)
from .tree import (
    Attr,
    BinOp,
    Call,
    EvaluationError,
    ExpressionError,
    Func,
    Literal,
    Node,
    Not,
    Ref,
    calls,
    names_a_status,
    refs,
)

__all__ = [
    "CLOSE",
    "FUNCTIONS",
    "MAX_NESTING",
    "MAX_TOKENS",
    "MAX_VALUE_CHARS",
    "OPEN",
    "VALUE_FUNCTIONS",
    "Attr",
    "BinOp",
    "Call",
    "EvaluationError",
    "ExpressionError",
    "Func",
    "Literal",
    "Node",
    "Not",
    "Occurrence",
    "Ref",
    "calls",
    "evaluate",
    "find",
    "names_a_status",
    "parse",
    "parse_condition",
    "refs",
    "substitute",
    "to_text",
    "truthy",
]

"""The ``${{ ... }}`` expression language: parsing, references and evaluation.

Grammar (small on purpose)::

    expr    := or
    or      := and ('||' and)*
    and     := unary ('&&' unary)*
    unary   := '!' unary | cmp
    cmp     := atom (('==' | '!=') atom)?
    atom    := (STRING | NUMBER | 'true' | 'false' | call | func | ref | '(' expr ')') ('.' NAME)*
    call    := ('success' | 'failure' | 'always' | 'cancelled') '(' ')'
    func    := FUNC '(' (expr (',' expr)*)? ')'
    ref     := 'params' '.' NAME | 'steps' '.' ID '.' 'outputs' ('.' NAME)?
             | 'steps' '.' ID '.' 'status' | 'run' '.' 'status' | 'needs'
             | 'matrix' '.' NAME | 'item'

``steps.ID.status`` is ``succeeded``, ``failed``, ``skipped`` or ``cancelled``;
``run.status`` is ``succeeded`` while nothing has failed, else ``failed`` or ``cancelled``.
``needs`` is GitHub's ``needs`` context: ``{ID: {"result": status, "outputs": {...}}}`` for
each step listed in ``needs:``, so ``toJSON(needs)`` feeds an "alls-green" check.

``FUNC`` is one of GitHub Actions' value functions (``contains``, ``startsWith``,
``endsWith``, ``format``, ``join``, ``toJSON``, ``fromJSON``), with GitHub's semantics:
string comparison ignores case, and ``fromJSON`` gives lists and objects. Their results are
bounded (``MAX_VALUE_CHARS``) so a short expression cannot build a huge value.

Expressions are never pasted into shell text: see ``plan/bashtext.py: rewrite_command``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

OPEN = "${{"
CLOSE = "}}"
FUNCTIONS = ("success", "failure", "always", "cancelled")
VALUE_FUNCTIONS = ("contains", "startsWith", "endsWith", "format", "join", "toJSON", "fromJSON")
_ARITY = {
    "contains": (2, 2),
    "startsWith": (2, 2),
    "endsWith": (2, 2),
    "format": (1, 64),
    "join": (1, 2),
    "toJSON": (1, 1),
    "fromJSON": (1, 1),
}
# The largest text a function may produce: the size of the largest step output.
MAX_VALUE_CHARS = 1024 * 1024
# Bounds keep parsing and the recursive tree walks (refs, evaluate) far from Python's
# recursion limit whatever a definition contains.
MAX_TOKENS = 256
MAX_NESTING = 32  # levels of '(' and '!'
_NAME = r"[A-Za-z_][A-Za-z0-9_-]*"
_TRAILING_SPACE = re.compile(r"\s*\Z")
_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<num>-?\d+(?:\.\d+)?)|(?P<op>==|!=|&&|\|\||!|\(|\)|\.|,)"
    rf"|(?P<name>{_NAME}))"
)


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


@dataclass(frozen=True)
class Occurrence:
    """One ``${{ ... }}`` in a text: its span and its parsed body."""

    start: int
    end: int
    source: str
    node: Node


def find(text: str) -> list[Occurrence]:
    """Every expression in ``text``, parsed. Raises ExpressionError on a malformed one."""
    out: list[Occurrence] = []
    pos = 0
    while True:
        start = text.find(OPEN, pos)
        if start < 0:
            return out
        end = _close_of(text, start)
        body = text[start + len(OPEN) : end]
        out.append(Occurrence(start, end + len(CLOSE), body.strip(), parse(body)))
        pos = end + len(CLOSE)


def _close_of(text: str, start: int) -> int:
    """Index of the ``}}`` ending the expression opened at ``start``; ``}}`` in a string is text."""
    pos = start + len(OPEN)
    close = text.find(CLOSE, pos)
    while close >= 0:
        quote = text.find("'", pos, close)
        if quote < 0:
            return close
        end_quote = text.find("'", quote + 1)
        if end_quote < 0:
            raise ExpressionError(
                f'unterminated string in expression {_snippet(text, start)!r} (missing "\'")'
            )
        pos = end_quote + 1
        if close < pos:
            close = text.find(CLOSE, pos)
    raise ExpressionError(f"unterminated expression {_snippet(text, start)!r} (missing '{CLOSE}')")


def _snippet(text: str, start: int) -> str:
    return text[start : start + 30].splitlines()[0]


def parse(source: str) -> Node:
    """Parse an expression body (without the ``${{ }}``)."""
    tokens = _tokenize(source)
    if not tokens:
        raise ExpressionError("empty expression")
    parser = _Parser(tokens, source)
    node = parser.parse_or()
    if parser.pos != len(tokens):
        raise ExpressionError(f"unexpected {tokens[parser.pos][1]!r} in expression {source!r}")
    return node


def parse_condition(text: str) -> Node:
    """An ``if:`` value: either a bare expression or one wrapped in ``${{ }}``."""
    stripped = text.strip()
    if stripped.startswith(OPEN):
        occ = find(stripped)
        if len(occ) != 1 or occ[0].start != 0 or occ[0].end != len(stripped):
            raise ExpressionError("an if: condition must be a single expression")
        return occ[0].node
    return parse(stripped)


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


def to_text(value: Any) -> str:
    """How a value becomes an environment variable's text."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, separators=(",", ":"))


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
        return _call(node.name, [evaluate(a, resolve, status) for a in node.args])
    if isinstance(node, Attr):
        value = evaluate(node.operand, resolve, status)
        if isinstance(value, str):  # an output holding JSON: GitHub derefs objects only
            value = _loads_or_none(value)
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


def _loads_or_none(text: str) -> Any:
    if not text.lstrip().startswith("{"):
        return None
    try:
        return _json(text)
    except ValueError:
        return None


def _fold(value: Any) -> str:
    """A value as GitHub compares it in string functions: its text, case folded."""
    return to_text(value).lower()


def _bounded(text: str, name: str) -> str:
    if len(text) > MAX_VALUE_CHARS:
        raise EvaluationError(f"{name}() would produce more than {MAX_VALUE_CHARS:,} characters")
    return text


_FORMAT_FIELD = re.compile(r"\{\{|\}\}|\{(\d+)\}|[{}]")


def _format(template: Any, args: list[Any]) -> str:
    text = to_text(template)
    out: list[str] = []
    size = 0
    pos = 0
    for m in _FORMAT_FIELD.finditer(text):
        piece = text[pos : m.start()]
        token = m.group(0)
        if token in ("{{", "}}"):
            piece += token[0]
        elif m.group(1) is not None:
            index = int(m.group(1))
            if index >= len(args):
                raise EvaluationError(
                    f"format(): {{{index}}} has no argument ({len(args)} given after the format)"
                )
            piece += to_text(args[index])
        else:
            raise EvaluationError(
                f"format(): unmatched {token!r} in {text[:40]!r}; write {token}{token}"
            )
        size += len(piece)
        if size > MAX_VALUE_CHARS:
            raise EvaluationError(
                f"format() would produce more than {MAX_VALUE_CHARS:,} characters"
            )
        out.append(piece)
        pos = m.end()
    out.append(text[pos:])
    return _bounded("".join(out), "format")


def _call(name: str, args: list[Any]) -> Any:
    """GitHub Actions' value functions."""
    if name == "contains":
        haystack, needle = args
        if isinstance(haystack, str) and haystack.lstrip().startswith("["):
            haystack = _loads_list_or(haystack)
        if isinstance(haystack, list):
            return any(_fold(item) == _fold(needle) for item in haystack)
        return _fold(needle) in _fold(haystack)
    if name == "startsWith":
        return _fold(args[0]).startswith(_fold(args[1]))
    if name == "endsWith":
        return _fold(args[0]).endswith(_fold(args[1]))
    if name == "format":
        return _format(args[0], args[1:])
    if name == "join":
        items = args[0]
        if isinstance(items, str) and items.lstrip().startswith("["):
            items = _loads_list_or(items)
        sep = to_text(args[1]) if len(args) > 1 else ","
        if isinstance(items, list):
            return _bounded(sep.join(to_text(i) for i in items), "join")
        return to_text(items)
    if name == "toJSON":
        try:
            return _bounded(json.dumps(args[0], indent=2, sort_keys=False), "toJSON")
        except RecursionError:
            raise EvaluationError("toJSON(): the value nests too deeply") from None
    if name == "fromJSON":
        text = to_text(args[0])
        try:
            return _json(text)
        except ValueError as exc:
            why = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            raise EvaluationError(f"fromJSON(): not JSON: {text[:60]!r} ({why})") from None
    raise EvaluationError(f"unknown function {name}()")  # the parser admits none other


def _json(text: str) -> Any:
    """``json.loads`` of untrusted text, failing only with ValueError: besides a
    JSONDecodeError it raises a plain ValueError for an integer past Python's digit limit
    and RecursionError for nesting past the recursion limit."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _loads_list_or(text: str) -> Any:
    try:
        value = _json(text)
    except ValueError:
        return text
    return value if isinstance(value, list) else text


def truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value not in ("", "false", "0")
    return bool(value)


def _tokenize(source: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    while not _TRAILING_SPACE.match(source, pos):
        if len(tokens) == MAX_TOKENS:
            raise ExpressionError(
                f"expression {source.strip()[:40]!r}... is too long (more than {MAX_TOKENS} tokens)"
            )
        m = _TOKEN.match(source, pos)
        if not m or m.end() == pos:
            bad = source[pos:].strip()[:20]
            raise ExpressionError(f"cannot parse {bad!r} in expression {source.strip()!r}")
        kind = m.lastgroup or ""
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    return tokens


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]], source: str) -> None:
        self.tokens = tokens
        self.pos = 0
        self.source = source.strip()
        self.nesting = 0

    def _nest(self) -> None:
        self.nesting += 1
        if self.nesting > MAX_NESTING:
            raise ExpressionError(
                f"expression {self.source[:40]!r} nests '(' and '!' more than "
                f"{MAX_NESTING} levels deep"
            )

    def _peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _take(self, value: str | None = None, kind: str | None = None) -> str:
        tok = self._peek()
        if tok is None or (value and tok[1] != value) or (kind and tok[0] != kind):
            want = repr(value) if value else (kind or "a token")
            got = repr(tok[1]) if tok else "end of expression"
            raise ExpressionError(f"expected {want}, got {got} in expression {self.source!r}")
        self.pos += 1
        return tok[1]

    def parse_or(self) -> Node:
        node = self.parse_and()
        while (tok := self._peek()) and tok[1] == "||":
            self.pos += 1
            node = BinOp("||", node, self.parse_and())
        return node

    def parse_and(self) -> Node:
        node = self.parse_unary()
        while (tok := self._peek()) and tok[1] == "&&":
            self.pos += 1
            node = BinOp("&&", node, self.parse_unary())
        return node

    def parse_unary(self) -> Node:
        tok = self._peek()
        if tok and tok[1] == "!":
            self.pos += 1
            self._nest()
            node = Not(self.parse_unary())
            self.nesting -= 1
            return node
        return self.parse_cmp()

    def parse_cmp(self) -> Node:
        node = self.parse_atom()
        tok = self._peek()
        if tok and tok[1] in ("==", "!="):
            self.pos += 1
            return BinOp(tok[1], node, self.parse_atom())
        return node

    def parse_atom(self) -> Node:
        node = self._parse_primary()
        while (tok := self._peek()) and tok[1] == ".":  # matrix.os.name, fromJSON(x).key
            self.pos += 1
            node = Attr(node, self._take(kind="name"))
        return node

    def _parse_func(self, name: str) -> Func:
        self._take("(")
        self._nest()
        args: list[Node] = []
        if (tok := self._peek()) and tok[1] != ")":
            args.append(self.parse_or())
            while (tok := self._peek()) and tok[1] == ",":
                self.pos += 1
                args.append(self.parse_or())
        self._take(")")
        self.nesting -= 1
        low, high = _ARITY[name]
        if not low <= len(args) <= high:
            want = str(low) if low == high else f"{low} to {high}"
            raise ExpressionError(
                f"{name}() takes {want} argument{'s' if high > 1 else ''}, got {len(args)} "
                f"in expression {self.source!r}"
            )
        return Func(name, tuple(args))

    def _parse_primary(self) -> Node:
        tok = self._peek()
        if tok is None:
            raise ExpressionError(f"expression {self.source!r} ends too early")
        kind, value = tok
        if kind == "str":
            self.pos += 1
            return Literal(value[1:-1].replace("''", "'"))
        if kind == "num":
            self.pos += 1
            return Literal(float(value) if "." in value else int(value))
        if value == "(":
            self.pos += 1
            self._nest()
            node = self.parse_or()
            self._take(")")
            self.nesting -= 1
            return node
        if kind != "name":
            raise ExpressionError(f"unexpected {value!r} in expression {self.source!r}")
        self.pos += 1
        if value in ("true", "false"):
            return Literal(value == "true")
        if value in FUNCTIONS:
            self._take("(")
            self._take(")")
            return Call(value)
        nxt = self._peek()
        if nxt and nxt[1] == "(":
            canonical = {f.lower(): f for f in VALUE_FUNCTIONS}.get(value.lower())
            if canonical:  # GitHub's function names ignore case
                return self._parse_func(canonical)
            raise ExpressionError(
                f"unknown function {value}() in expression {self.source!r}; "
                f"known: {', '.join(f + '()' for f in FUNCTIONS + VALUE_FUNCTIONS)}"
            )
        if value == "params":
            self._take(".")
            return Ref("params", self._take(kind="name"))
        if value == "matrix":
            self._take(".")
            return Ref("matrix", self._take(kind="name"))
        if value == "item":
            return Ref("item")
        if value == "needs":
            return Ref("needs")
        if value == "run":
            self._take(".")
            self._take("status")
            return Ref("run_status")
        if value == "steps":
            self._take(".")
            step = self._take(kind="name")
            self._take(".")
            if (t := self._peek()) and t[1] == "status":
                self.pos += 1
                return Ref("status", step)
            self._take("outputs")
            if (t := self._peek()) and t[1] == ".":
                self.pos += 1
                return Ref("outputs", step, self._take(kind="name"))
            return Ref("all_outputs", step)
        raise ExpressionError(
            f"unknown name {value!r} in expression {self.source!r}; "
            "expected params.NAME, steps.ID.outputs.KEY, steps.ID.status, run.status, "
            "needs, matrix.KEY or item"
        )

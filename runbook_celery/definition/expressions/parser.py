"""Reading ``${{ ... }}`` expressions: finding them in a text, tokens, and the parser.

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

import re
from dataclasses import dataclass

from .tree import Attr, BinOp, Call, ExpressionError, Func, Literal, Node, Not, Ref

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
        return self._parse_name(value)

    def _parse_name(self, value: str) -> Node:
        """What follows a name: a boolean, a call of a function, or a reference."""
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
        return self._parse_ref(value)

    def _parse_ref(self, value: str) -> Ref:
        """``params.NAME``, ``matrix.KEY``, ``item``, ``needs``, ``run.status``, ``steps.ID...``"""
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

"""Where a ``${{ }}`` value may go in a step's Bash, decided from a real Bash syntax tree.

Pure: no Celery, no Redis. A value never becomes shell text: each ``${{ ref }}`` in ``run:``
becomes a reference to an environment variable holding the value, written so that Bash
expands it to exactly the value and does nothing else with it. How to write it depends on
the syntactic context, which we read from tree-sitter-bash's tree of the script (with each
``${{ }}`` replaced by a placeholder variable, ``${__RBX0__}``):

* a whole or partial unquoted word: ``"${VAR}"`` (no splitting, no globbing);
* inside a double-quoted string or an unquoted heredoc body: ``${VAR}``;
* a number (a ``type: number`` param, an all-numeric matrix key) in arithmetic: ``${VAR}``;
* in a comment: left as written.

Everything else is refused with a message saying what to write instead: single quotes,
``$'…'``, quoted heredocs (Bash expands nothing there, so the value would be spliced into
the text), arithmetic and subscripts (Bash evaluates ``a[$(cmd)]`` in a value as code), the
code or input of a second interpreter (``bash -c``, ``python -c``, ``eval``, ``ssh``, a
heredoc piped into ``sh``, ...), variable names, and any place the tree does not let us
classify with certainty. The command policy lives in ``bashcommands``, the reading of the
tree and the checks that it can be trusted in ``bashtree``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from . import bashcommands as bc
from . import bashtree as bt
from .bashtree import Node


class Quoting(Enum):
    """How a reference is written at a site that accepts one."""

    WORD = "word"  # "${VAR}"
    BARE = "bare"  # ${VAR}: inside "...", an unquoted heredoc, or arithmetic (numbers only)
    COMMENT = "comment"  # left as written


@dataclass(frozen=True)
class Expr:
    """One ``${{ }}`` to place: its span in the script, its source, and if it is a number."""

    start: int
    end: int
    source: str  # e.g. "params.user", for messages
    numeric: bool = False


@dataclass(frozen=True)
class Site:
    """Where one expression sits: how to write its reference there, or why it cannot go there."""

    expr: Expr
    quoting: Quoting | None
    refusal: str | None = None

    def message(self) -> str:
        return f"${{{{ {self.expr.source} }}}}: {self.refusal}"


class Unplaceable(ValueError):
    """Some expressions of a script sit where no reference is safe."""

    def __init__(self, sites: list[Site]) -> None:
        self.sites = sites
        super().__init__("; ".join(s.message() for s in sites))


def place(text: str, exprs: Sequence[Expr]) -> list[Site]:
    """Classify every expression of ``text`` (spans in order, not overlapping)."""
    if not exprs:
        return []
    source, spans = _with_placeholders(text, exprs)
    tree = bt.parse(source)
    whole = bt.whole_script_refusal(tree.root_node)
    if whole is None:
        patched = bt.indented_heredoc_patch(tree.root_node, source, spans)
        if patched != source:
            source, tree = patched, bt.parse(patched)
            whole = bt.whole_script_refusal(tree.root_node)
    if whole is not None:
        return [Site(e, None, f"{whole}; {_env_hint(e)}") for e in exprs]
    walker = _Walker(tree.root_node, source)
    return [walker.site(e, s, t) for e, (s, t) in zip(exprs, spans, strict=True)]


def render(text: str, sites: Sequence[Site], names: Sequence[str | None]) -> str:
    """``text`` with each placed expression replaced by a reference to its variable.

    ``names`` gives the variable of each site (None for comments, which stay as written).
    Raises Unplaceable listing every site that has no safe placement.
    """
    refused = [s for s in sites if s.quoting is None]
    if refused:
        raise Unplaceable(refused)
    out: list[str] = []
    pos = 0
    for site, name in zip(sites, names, strict=True):
        expr = site.expr
        out.append(text[pos : expr.start])
        if site.quoting is Quoting.COMMENT:
            out.append(text[expr.start : expr.end])
        elif name is None:
            raise ValueError(f"no variable for ${{{{ {expr.source} }}}}")
        elif site.quoting is Quoting.WORD:
            out.append(f'"${{{name}}}"')
        else:
            out.append(f"${{{name}}}")
        pos = expr.end
    out.append(text[pos:])
    return "".join(out)


# ---------------------------------------------------------------- parsing


def _placeholder(index: int) -> str:
    return f"${{__RBX{index}__}}"


def _with_placeholders(text: str, exprs: Sequence[Expr]) -> tuple[bytes, list[tuple[int, int]]]:
    """The script as UTF-8 with placeholders, and each placeholder's byte span."""
    parts: list[bytes] = []
    spans: list[tuple[int, int]] = []
    size = pos = 0
    for index, expr in enumerate(exprs):
        before = text[pos : expr.start].encode()
        token = _placeholder(index).encode()
        parts += [before, token]
        size += len(before)
        spans.append((size, size + len(token)))
        size += len(token)
        pos = expr.end
    parts.append(text[pos:].encode())
    return b"".join(parts), spans


# ---------------------------------------------------------------- messages

_ENV_RESERVED = frozenset({"PATH", "HOME", "USER", "SHELL", "PWD", "IFS", "LANG", "TERM", "UID"})


def env_name(source: str) -> str:
    """A readable environment variable name to suggest for an expression."""
    last = source.split(".")[-1] if source != "item" else "item"
    name = re.sub(r"[^A-Za-z0-9_]", "_", last).upper() or "VALUE"
    if name[0].isdigit() or name in _ENV_RESERVED or name in bc.CODE_VARIABLES:
        name = f"V_{name}"
    return name


def _env_hint(expr: Expr) -> str:
    name = env_name(expr.source)
    return f'put it in the step\'s env: ({name}: ${{{{ {expr.source} }}}}) and write "${name}"'


_ARITH_REASON = (
    "Bash evaluates this as arithmetic, which runs the $(...) in a value such as a[$(cmd)]"
)


def _arith_hint(expr: Expr) -> str:
    name = env_name(expr.source)
    check = f"after checking it is a number ([[ ${name} =~ ^-?[0-9]+$ ]])"
    if expr.source.startswith("params."):
        return (
            "declare the param with type: number (checked when a run is triggered), or "
            f"{_env_hint(expr)} {check}"
        )
    return f"{_env_hint(expr)} {check}"


def _code_hint(expr: Expr) -> str:
    name = env_name(expr.source)
    return (
        f"{_env_hint(expr)}, and have that code read {name} from its environment "
        f'(os.environ[\'{name}\'] in Python, ENVIRON["{name}"] in awk), or pass "${name}" '
        f'as an argument after the code (sh -c \'... "$1"\' _ "${name}")'
    )


def _unexpanded_refusal(node: Node, expr: Expr) -> str:
    """Why a placeholder that Bash would not expand cannot hold a value."""
    kinds = {n.type for n in bt.ancestors(node, include_self=True)}
    if "raw_string" in kinds:
        return (
            "inside single quotes Bash expands nothing, so the value would be spliced into "
            f'the quoted text; use double quotes ("...${{{{ {expr.source} }}}}...") if the text '
            f"is data, else {_code_hint(expr)}"
        )
    if "ansi_c_string" in kinds:
        return (
            "inside $'...' Bash expands nothing, so the value would be spliced into the text; "
            f'use double quotes ("...${{{{ {expr.source} }}}}...") instead'
        )
    if bt.in_quoted_heredoc(node):
        return (
            "in a quoted heredoc (<<'EOF') Bash expands nothing, so the value would be "
            "spliced into the text; use an unquoted delimiter (<<EOF) if the body is data, "
            f"else {_code_hint(expr)}"
        )
    if "regex" in kinds:
        return (
            "the right side of =~ is a regular expression, read by a parser that cannot place "
            f'a value in it; {_env_hint(expr)} ([[ $s =~ "${env_name(expr.source)}" ]] matches '
            "it literally)"
        )
    return (
        f"Bash does not expand this place as a variable ({node.type}), so where the value "
        f"would land is unknown; {_env_hint(expr)}"
    )


# ---------------------------------------------------------------- classification


class _Refused(Exception):
    """Internal: a check failed; the reason becomes the site's refusal."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


class _Walker:
    """Classifies placeholders against one parsed script."""

    def __init__(self, root: Node, source: bytes) -> None:
        self.root = root
        self.source = source
        self.integers, self.namerefs, self.unknown_attributes = bt.attributes(root)

    def site(self, expr: Expr, start: int, end: int) -> Site:
        expansion = self._expansion_at(start, end)
        if expansion is None:
            node = self.root.descendant_for_byte_range(start, end) or self.root
            if any(n.type == "comment" for n in bt.ancestors(node, include_self=True)):
                return Site(expr, Quoting.COMMENT)
            return Site(expr, None, _unexpanded_refusal(node, expr))
        try:
            quoting = self._classify(expansion, expr)
        except _Refused as refused:
            return Site(expr, None, refused.reason)
        return Site(expr, quoting)

    def _expansion_at(self, start: int, end: int) -> Node | None:
        """The expansion node of the placeholder at ``start:end`` if Bash expands it there.

        Its variable name spans exactly the placeholder's name; the node itself may begin
        earlier, as tree-sitter-bash lets the ``${`` token take blanks before it in a string.
        """
        name = self.root.descendant_for_byte_range(start + 2, end - 1)
        if name is None or name.type != "variable_name":
            return None
        if (name.start_byte, name.end_byte) != (start + 2, end - 1):
            return None
        expansion = name.parent
        if expansion is None or expansion.type != "expansion" or expansion.end_byte != end:
            return None
        if expansion.named_child_count != 1 or self.source[expansion.start_byte : start].strip():
            return None
        return expansion

    def _classify(self, expansion: Node, expr: Expr) -> Quoting:
        """Check every ancestor; the nearest quoting construct decides how to write it."""
        quoting: Quoting | None = None
        child = expansion
        for node in bt.ancestors(expansion):
            decided = self._check(node, child, expansion, expr)
            if quoting is None and decided is not None:
                quoting = decided
            child = node
        return quoting or Quoting.WORD

    def _check(self, node: Node, child: Node, exp: Node, expr: Expr) -> Quoting | None:
        """Refuse (raise) if ``node`` makes the place unsafe; return the quoting it imposes."""
        kind = node.type
        if kind == "subscript":
            return self._arithmetic(expr, "an array subscript is arithmetic: ")
        if _is_arithmetic(node):
            if kind == "c_style_for_statement" and node.child_by_field_name("body") == child:
                return None
            return self._arithmetic(expr, "")
        if kind in _NEUTRAL:
            return None
        if kind == "string":
            if bt.translated(node):
                raise _Refused('$"..." may be replaced by a translation; use "..." instead')
            return Quoting.BARE
        if kind in ("command_substitution", "process_substitution"):
            if bt.node_text(node).startswith("`") and "\\" in bt.node_text(node):
                raise _Refused(
                    "inside `...` with backslashes Bash re-reads the text before running it; "
                    "use $(...) instead"
                )
            return Quoting.WORD  # a fresh script: quoting outside does not reach inside
        if kind == "heredoc_body":
            self._plain_heredoc(node, exp, expr)
            return Quoting.BARE
        handler = _HANDLERS.get(kind)
        if handler is None:
            raise _Refused(
                f"runbook-celery cannot tell how Bash reads this place (inside {kind}); "
                f"{_env_hint(expr)}"
            )
        handler(self, node, child, exp, expr)
        return None

    def _plain_heredoc(self, body: Node, exp: Node, expr: Expr) -> None:
        """A value goes in a heredoc only if Bash expands nothing else there but variables.

        tree-sitter-bash misreads substitutions in heredoc bodies: `...` as text, $(( as
        $( (, and a line starting with blanks then $( as text; Bash runs all of them. So a
        body with a substitution or an operator ${...} is not trusted at all.
        """
        text = _PLACEHOLDER.sub("", bt.node_text(body))
        if _HEREDOC_CODE.search(text):
            raise _Refused(
                "this heredoc also has $(...), `...`, $((...)) or ${...} with an operator, "
                "which the Bash parser does not read reliably in a heredoc; compute those into "
                "variables before it (x=$(cmd)) and write $x in the heredoc, or "
                f"{_env_hint(expr)}"
            )
        before = self.source[: exp.named_children[0].start_byte - 2]  # up to the ${
        if (len(before) - len(before.rstrip(b"\\"))) % 2:
            raise _Refused(f"a \\ before it makes Bash take it as text; {_env_hint(expr)}")

    def _arithmetic(self, expr: Expr, what: str) -> Quoting:
        if expr.numeric:
            return Quoting.BARE
        raise _Refused(f"{what}{_ARITH_REASON}; {_arith_hint(expr)}")

    # -- handlers: raise _Refused or return

    def _expansion(self, node: Node, child: Node, exp: Node, expr: Expr) -> None:
        raise _Refused(
            "inside another ${...} the value's place depends on that expansion's operator; "
            f"{_env_hint(expr)} (e.g. ${{x:-${env_name(expr.source)}}})"
        )

    def _assignment(self, node: Node, child: Node, exp: Node, expr: Expr) -> None:
        name_node = node.child_by_field_name("name")
        if name_node is not None and name_node.type == "subscript":
            name_node = name_node.child_by_field_name("name")
        name = bt.node_text(name_node) if name_node is not None else ""
        if child == node.child_by_field_name("name"):
            return  # a subscript of the name: the subscript handler decided
        if name in bc.CODE_VARIABLES:
            raise _Refused(
                f"{name} tells Bash or the loader what code to run; {_env_hint(expr)} "
                "if you mean it"
            )
        if name in self.namerefs or self.unknown_attributes:
            raise _Refused(
                f"{name or 'this variable'} may be a nameref (declare -n): assigning to it "
                f"evaluates the value as a variable name; {_env_hint(expr)}"
            )
        if name in self.integers and not expr.numeric:
            raise _Refused(
                f"{name} has the integer attribute (declare -i): {_ARITH_REASON}; "
                f"{_arith_hint(expr)}"
            )

    def _array(self, node: Node, child: Node, exp: Node, expr: Expr) -> None:
        element = bt.node_text(child)
        if not element.startswith("["):
            return
        split = element.find("]=")
        offset = exp.start_byte - child.start_byte
        if split < 0 or offset < split:
            if expr.numeric:
                return
            raise _Refused(
                f"an array subscript is arithmetic: {_ARITH_REASON}; " + _arith_hint(expr)
            )

    def _declaration(self, node: Node, child: Node, exp: Node, expr: Expr) -> None:
        keyword = node.children[0].type if node.children else "declare"
        if child.type != "variable_assignment":
            raise _Refused(
                f"{keyword} takes this word as a variable name or option (a subscript in a name "
                f"runs); {_env_hint(expr)}"
            )
        flags = bt.declaration_flags(node)
        if flags is None:
            raise _Refused(f"{keyword}'s options are not literal words; {_env_hint(expr)}")
        if "n" in flags and keyword in bt.NAMEREF_DECLARATIONS:
            raise _Refused(
                f"{keyword} -n makes the value a variable name (a subscript in it runs); "
                f"{_env_hint(expr)}"
            )
        if "i" in flags and not expr.numeric:
            raise _Refused(f"{keyword} -i: {_ARITH_REASON}; {_arith_hint(expr)}")

    def _test_command(self, node: Node, child: Node, exp: Node, expr: Expr) -> None:
        """``[ ... ]`` is the test command: Bash reads ordinary words there (``<(...)`` runs,
        ``<`` redirects), the parser an expression. Only a plain one is trusted."""
        single = bool(node.children) and node.children[0].type == "["
        if single and re.search(r"[()<>]", bt.node_text(node)):
            raise _Refused(
                "inside [ ... ] with parentheses, < or >, Bash reads the words differently "
                f"from the parser; use [[ ... ]], or {_env_hint(expr)}"
            )

    def _unset(self, node: Node, child: Node, exp: Node, expr: Expr) -> None:
        raise _Refused(f"unset evaluates a subscript in the name it is given; {_env_hint(expr)}")

    def _test(self, node: Node, child: Node, exp: Node, expr: Expr) -> None:
        """binary/unary expressions: in [[ ]] the -eq family is arithmetic; -v reads a name."""
        test = next((a for a in bt.ancestors(node) if a.type == "test_command"), None)
        if test is None:
            if any(_is_arithmetic(a) for a in bt.ancestors(node)):
                return  # inside arithmetic: the arithmetic ancestor decides
            raise _Refused(
                f"runbook-celery cannot tell how Bash reads this expression; {_env_hint(expr)}"
            )
        operator = node.child_by_field_name("operator")
        op = bt.node_text(operator) if operator is not None else ""
        if op in ("-v",):
            raise _Refused(f"{op} evaluates a subscript in the variable name; {_env_hint(expr)}")
        double = bool(test.children) and test.children[0].type == "[["
        if op in _ARITH_TESTS and double and not expr.numeric:
            raise _Refused(f"[[ ... {op} ... ]]: {_ARITH_REASON}; {_arith_hint(expr)}")

    def _command(self, node: Node, child: Node, exp: Node, expr: Expr) -> None:
        words, index = bt.command_words(node, child)
        if index is None:
            if child.type == "variable_assignment":
                return  # a prefix assignment: the assignment handler decided
            if bt.is_stdin_redirect(child):
                self._stdin(node, expr, "a here-string or < file feeds it")
            return
        refusal = bc.argument_refusal(words, index, expr.numeric)
        if refusal is None:
            return
        if refusal.arithmetic:
            raise _Refused(f"{refusal.reason}: {_ARITH_REASON}; {_arith_hint(expr)}")
        hint = _code_hint(expr) if refusal.code else _env_hint(expr)
        raise _Refused(f"{refusal.reason}; {hint}")

    def _redirected(self, node: Node, child: Node, exp: Node, expr: Expr) -> None:
        if bt.is_stdin_redirect(child):
            body = node.child_by_field_name("body")
            if body is not None:
                self._stdin(body, expr, "a here-string or < file feeds it")

    def _heredoc(self, node: Node, child: Node, exp: Node, expr: Expr) -> None:
        if child.type != "heredoc_body":
            return  # a command after the heredoc operator on its line
        if bt.in_quoted_heredoc(child):  # the parser saw an expansion Bash will not make
            raise _Refused(f"in a quoted heredoc Bash expands nothing; {_env_hint(expr)}")
        consumers = [c for c in node.children if c.is_named and c.type not in _HEREDOC_PARTS]
        owner = node.parent
        if owner is not None and owner.type == "redirected_statement":
            body = owner.child_by_field_name("body")
            if body is not None:
                consumers.insert(0, body)
        elif owner is not None:
            consumers.insert(0, owner)
        for consumer in consumers:
            self._stdin(consumer, expr, "this heredoc feeds it")

    def _pipeline(self, node: Node, child: Node, exp: Node, expr: Expr) -> None:
        later = False
        for stage in node.children:
            if stage == child:
                later = True
            elif later and stage.is_named:
                self._stdin(stage, expr, "the value is piped into it")

    def _stdin(self, node: Node, expr: Expr, how: str) -> None:
        for command in bt.descendants(node, "command"):
            words, _ = bt.command_words(command, None)
            why = bc.reads_code_from_stdin(words)
            if why is not None:
                raise _Refused(f"{how}, and {why}; {_code_hint(expr)}")

    def _function(self, node: Node, child: Node, exp: Node, expr: Expr) -> None:
        if child != node.child_by_field_name("body"):
            raise _Refused(f"a value cannot name a function; {_env_hint(expr)}")


_NEUTRAL = frozenset(
    {
        "program",
        "concatenation",
        "list",
        "subshell",
        "do_group",
        "if_statement",
        "elif_clause",
        "else_clause",
        "while_statement",
        "for_statement",
        "select_statement",
        "case_statement",
        "case_item",
        "negated_command",
        "variable_assignments",
        "parenthesized_expression",
        "command_name",
        "file_redirect",
        "herestring_redirect",
    }
)
_ARITHMETIC = frozenset({"arithmetic_expansion", "c_style_for_statement", "subscript"})


def _is_arithmetic(node: Node) -> bool:
    """$(( )), (( )), for (( )) and subscripts: Bash evaluates what is inside as arithmetic.

    tree-sitter-bash reads ``$((`` in a heredoc as a command substitution of a subshell,
    where Bash reads arithmetic: a substitution or subshell written ``$((``/``((`` counts.
    """
    kind = node.type
    if kind in _ARITHMETIC or (kind == "compound_statement" and bt.is_arith_compound(node)):
        return True
    return (kind == "command_substitution" and bt.node_text(node).startswith("$((")) or (
        kind == "subshell" and bt.node_text(node).startswith("((")
    )


_ARITH_TESTS = frozenset({"-eq", "-ne", "-lt", "-le", "-gt", "-ge"})
_HEREDOC_PARTS = frozenset({"heredoc_start", "heredoc_body", "heredoc_end"})
_PLACEHOLDER = re.compile(r"\$\{__RBX[0-9]+__\}")
# what Bash runs or evaluates in a heredoc body besides plain $NAME / ${NAME}
_HEREDOC_CODE = re.compile(r"\$\(|`|\$\[|\$\{(?![A-Za-z_][A-Za-z0-9_]*\}|[0-9@*#?$!-]\})")
_HANDLERS = {
    "expansion": _Walker._expansion,
    "variable_assignment": _Walker._assignment,
    "array": _Walker._array,
    "declaration_command": _Walker._declaration,
    "unset_command": _Walker._unset,
    "test_command": _Walker._test_command,
    "binary_expression": _Walker._test,
    "unary_expression": _Walker._test,
    "ternary_expression": _Walker._test,
    "postfix_expression": _Walker._test,
    "command": _Walker._command,
    "redirected_statement": _Walker._redirected,
    "heredoc_redirect": _Walker._heredoc,
    "pipeline": _Walker._pipeline,
    "function_definition": _Walker._function,
    "compound_statement": lambda *_: None,  # { ...; } (the (( )) form is arithmetic)
}

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
classify with certainty. The command policy lives in ``bashcommands``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import tree_sitter
import tree_sitter_bash

from . import bashcommands as bc

_LANGUAGE = tree_sitter.Language(tree_sitter_bash.language())
Node = tree_sitter.Node


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
    parser = tree_sitter.Parser(_LANGUAGE)
    tree = parser.parse(source)
    whole = _whole_script_refusal(tree.root_node)
    if whole is None:
        patched = _indented_heredoc_patch(tree.root_node, source, spans)
        if patched != source:
            source, tree = patched, parser.parse(patched)
            whole = _whole_script_refusal(tree.root_node)
    if whole is not None:
        return [Site(e, None, f"{whole}; {_env_hint(e)}") for e in exprs]
    walker = _Walker(tree.root_node, source)
    return [walker.site(e, s, t) for e, (s, t) in zip(exprs, spans, strict=True)]


def _indented_heredoc_patch(root: Node, source: bytes, spans: list[tuple[int, int]]) -> bytes:
    """The source with blanks before a heredoc line's leading placeholder made ``_``.

    tree-sitter-bash 0.25 sees no expansion in a heredoc line that starts with blanks and
    then ``${``, which Bash expands like any other. The blanks are text of the heredoc body,
    so making them another character of the same length changes nothing else in the tree.
    """
    out = bytearray(source)
    for start, end in spans:
        line_start = source.rfind(b"\n", 0, start) + 1
        if line_start == start or source[line_start:start].strip(b" \t"):
            continue
        node = root.descendant_for_byte_range(start, end)
        if node is not None and node.type in ("heredoc_body", "heredoc_content"):
            out[line_start:start] = b"_" * (start - line_start)
    return bytes(out)


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
        if name is None or site.quoting is Quoting.COMMENT:
            out.append(text[expr.start : expr.end])
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


def _line_of(node: Node) -> int:
    return node.start_point[0] + 1


def _whole_script_refusal(root: Node) -> str | None:
    """A reason no placement in this script can be trusted: the tree is not Bash's tree."""
    if root.has_error:
        bad = _first_error(root)
        where = f" near line {_line_of(bad)} of the script" if bad is not None else ""
        return (
            f"the Bash parser cannot read this script{where}, so where the value lands is "
            "unknown; fix the syntax"
        )
    heredocs = [
        (h, start)
        for h in _descendants(root, "heredoc_redirect")
        if (start := _child(h, "heredoc_start")) is not None
    ]
    lines = [start.start_point[0] for _, start in heredocs]
    for line in lines:
        if lines.count(line) > 1:
            return (
                f"line {line + 1} of the script starts two heredocs, which the Bash parser "
                "does not read reliably; put each heredoc on its own line"
            )
    for heredoc, start in heredocs:
        problem = _heredoc_problem(heredoc, start)
        if problem is not None:
            return problem
    return None


def _heredoc_problem(heredoc: Node, start: Node) -> str | None:
    """A heredoc whose body the parser did not end at its delimiter line."""
    body = _child(heredoc, "heredoc_body")
    end = _child(heredoc, "heredoc_end")
    if body is None and end is None:
        return None
    delimiter = re.sub(r"""['"\\]""", "", _text(start))
    dash = any(c.type == "<<-" for c in heredoc.children)
    ended = _text(end) if end is not None else None
    if ended is None or (ended.lstrip("\t") if dash else ended) != delimiter:
        return (
            f"the Bash parser does not end the heredoc started on line {_line_of(start)} of "
            f"the script at a line {delimiter!r}; write that heredoc more simply"
        )
    if body is not None:
        lines = _text(body).split("\n")
        for line in lines[:-1]:
            if (line.lstrip("\t") if dash else line) == delimiter:
                return (
                    f"the Bash parser reads the heredoc started on line {_line_of(start)} of "
                    "the script past its end; write that heredoc more simply"
                )
    return None


def _first_error(node: Node) -> Node | None:
    if node.type == "ERROR" or node.is_missing:
        return node
    for child in node.children:
        if child.has_error or child.is_missing:
            found = _first_error(child)
            if found is not None:
                return found
    return None


def _descendants(node: Node, kind: str) -> list[Node]:
    out: list[Node] = []
    stack = [node]
    while stack:
        current = stack.pop()
        if current.type == kind:
            out.append(current)
        stack.extend(reversed(current.children))
    return out


def _child(node: Node, kind: str) -> Node | None:
    return next((c for c in node.children if c.type == kind), None)


def _text(node: Node) -> str:
    return (node.text or b"").decode("utf-8", "replace")


def _contains(node: Node, start: int, end: int) -> bool:
    return node.start_byte <= start and end <= node.end_byte


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
    kinds = {n.type for n in _ancestors(node, include_self=True)}
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
    if _in_quoted_heredoc(node):
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


def _in_quoted_heredoc(node: Node) -> bool:
    for ancestor in _ancestors(node, include_self=True):
        if ancestor.type == "heredoc_redirect":
            start = _child(ancestor, "heredoc_start")
            return start is not None and any(q in _text(start) for q in "'\"\\")
    return False


def _ancestors(node: Node, include_self: bool = False) -> list[Node]:
    out = [node] if include_self else []
    current = node.parent
    while current is not None:
        out.append(current)
        current = current.parent
    return out


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
        self.integers, self.namerefs, self.unknown_attributes = _attributes(root)

    def site(self, expr: Expr, start: int, end: int) -> Site:
        expansion = self._expansion_at(start, end)
        if expansion is None:
            node = self.root.descendant_for_byte_range(start, end) or self.root
            if any(n.type == "comment" for n in _ancestors(node, include_self=True)):
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
        for node in _ancestors(expansion):
            decided = self._check(node, child, expansion, expr)
            if quoting is None and decided is not None:
                quoting = decided
            child = node
        return quoting or Quoting.WORD

    def _check(self, node: Node, child: Node, exp: Node, expr: Expr) -> Quoting | None:
        """Refuse (raise) if ``node`` makes the place unsafe; return the quoting it imposes."""
        kind = node.type
        if kind in _NEUTRAL:
            return None
        if kind == "string":
            if _translated(node):
                raise _Refused('$"..." may be replaced by a translation; use "..." instead')
            return Quoting.BARE
        if kind in ("command_substitution", "process_substitution"):
            if _text(node).startswith("`") and "\\" in _text(node):
                raise _Refused(
                    "inside `...` with backslashes Bash re-reads the text before running it; "
                    "use $(...) instead"
                )
            return Quoting.WORD  # a fresh script: quoting outside does not reach inside
        if kind == "heredoc_body":
            return Quoting.BARE
        if kind in _ARITHMETIC or (kind == "compound_statement" and _is_arith_compound(node)):
            if kind == "c_style_for_statement" and node.child_by_field_name("body") == child:
                return None
            return self._arithmetic(expr, "")
        if kind == "subscript":
            return self._arithmetic(expr, "an array subscript is arithmetic: ")
        handler = _HANDLERS.get(kind)
        if handler is None:
            raise _Refused(
                f"runbook-celery cannot tell how Bash reads this place (inside {kind}); "
                f"{_env_hint(expr)}"
            )
        handler(self, node, child, exp, expr)
        return None

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
        name = _text(name_node) if name_node is not None else ""
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
        element = _text(child)
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
        flags = _declaration_flags(node)
        if flags is None:
            raise _Refused(f"{keyword}'s options are not literal words; {_env_hint(expr)}")
        if "n" in flags and keyword in _NAMEREF_DECLARATIONS:
            raise _Refused(
                f"{keyword} -n makes the value a variable name (a subscript in it runs); "
                f"{_env_hint(expr)}"
            )
        if "i" in flags and not expr.numeric:
            raise _Refused(f"{keyword} -i: {_ARITH_REASON}; {_arith_hint(expr)}")

    def _unset(self, node: Node, child: Node, exp: Node, expr: Expr) -> None:
        raise _Refused(f"unset evaluates a subscript in the name it is given; {_env_hint(expr)}")

    def _test(self, node: Node, child: Node, exp: Node, expr: Expr) -> None:
        """binary/unary expressions: in [[ ]] the -eq family is arithmetic; -v reads a name."""
        test = next((a for a in _ancestors(node) if a.type == "test_command"), None)
        if test is None:
            return  # inside arithmetic: the arithmetic ancestor decides
        operator = node.child_by_field_name("operator")
        op = _text(operator) if operator is not None else ""
        if op in ("-v",):
            raise _Refused(f"{op} evaluates a subscript in the variable name; {_env_hint(expr)}")
        double = bool(test.children) and test.children[0].type == "[["
        if op in _ARITH_TESTS and double and not expr.numeric:
            raise _Refused(f"[[ ... {op} ... ]]: {_ARITH_REASON}; {_arith_hint(expr)}")

    def _command(self, node: Node, child: Node, exp: Node, expr: Expr) -> None:
        words, index = _command_words(node, child)
        if index is None:
            if child.type == "variable_assignment":
                return  # a prefix assignment: the assignment handler decided
            if _is_stdin_redirect(child):
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
        if _is_stdin_redirect(child):
            body = node.child_by_field_name("body")
            if body is not None:
                self._stdin(body, expr, "a here-string or < file feeds it")

    def _heredoc(self, node: Node, child: Node, exp: Node, expr: Expr) -> None:
        if child.type != "heredoc_body":
            return  # a command after the heredoc operator on its line
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
        for command in _descendants(node, "command"):
            words, _ = _command_words(command, None)
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
        "test_command",
        "parenthesized_expression",
        "command_name",
        "file_redirect",
        "herestring_redirect",
    }
)
_ARITHMETIC = frozenset({"arithmetic_expansion", "c_style_for_statement"})
_ARITH_TESTS = frozenset({"-eq", "-ne", "-lt", "-le", "-gt", "-ge"})
_NAMEREF_DECLARATIONS = frozenset({"declare", "typeset", "local"})
_HEREDOC_PARTS = frozenset({"heredoc_start", "heredoc_body", "heredoc_end"})
_HANDLERS = {
    "expansion": _Walker._expansion,
    "variable_assignment": _Walker._assignment,
    "array": _Walker._array,
    "declaration_command": _Walker._declaration,
    "unset_command": _Walker._unset,
    "binary_expression": _Walker._test,
    "unary_expression": _Walker._test,
    "command": _Walker._command,
    "redirected_statement": _Walker._redirected,
    "heredoc_redirect": _Walker._heredoc,
    "pipeline": _Walker._pipeline,
    "function_definition": _Walker._function,
    "compound_statement": lambda *_: None,  # { ...; } (the (( )) form is arithmetic)
}


def _is_arith_compound(node: Node) -> bool:
    return bool(node.children) and node.children[0].type == "(("


def _translated(string: Node) -> bool:
    """``$"..."``: tree-sitter-bash reads the ``$`` as a separate token before the string."""
    previous = string.prev_sibling
    return previous is not None and previous.type == "$" and previous.end_byte == string.start_byte


def _is_stdin_redirect(node: Node) -> bool:
    if node.type == "herestring_redirect":
        return True
    if node.type != "file_redirect":
        return False
    return any(c.type in ("<", "<&", "<>") for c in node.children)


def _literal(node: Node) -> str | None:
    """The text a word stands for if it expands nothing (quotes removed), else None."""
    kind = node.type
    if kind == "command_name":
        return _literal(node.children[0]) if node.children else None
    if kind in ("word", "number"):
        text = _text(node)
        return None if "$" in text or "`" in text else re.sub(r"\\(.)", r"\1", text, flags=re.S)
    if kind == "raw_string":
        return _text(node)[1:-1]
    if kind == "string":
        parts = [c for c in node.children if c.type not in ('"',)]
        if all(c.type == "string_content" for c in parts):
            return re.sub(r'\\([$`"\\])', r"\1", "".join(_text(c) for c in parts))
        return None
    if kind == "concatenation":
        pieces = [_literal(c) for c in node.children]
        return None if any(p is None for p in pieces) else "".join(p or "" for p in pieces)
    return None


_ASSIGN_PREFIX = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=")


def _command_words(command: Node, child: Node | None) -> tuple[list[bc.Word], int | None]:
    """The command's name and arguments, and the index of the one that is ``child``."""
    words: list[bc.Word] = []
    index: int | None = None
    for i, part in enumerate(command.children):
        field = command.field_name_for_child(i)
        if field not in ("name", "argument"):
            continue
        match = _ASSIGN_PREFIX.match(_text(part))
        words.append(bc.Word(_literal(part), match.group(1) if match else None))
        if part == child:
            index = len(words) - 1
    return words, index


def _declaration_flags(node: Node) -> str | None:
    """The letters of a declaration's options (``-ix`` -> ``ix``); None if one is not literal."""
    letters = ""
    for part in node.children[1:]:
        if part.type in ("variable_assignment", "variable_name"):
            continue
        text = _literal(part)
        if text is None:
            return None
        if text[:1] in ("-", "+"):
            letters += text[1:]
    return letters


def _attributes(root: Node) -> tuple[set[str], set[str], bool]:
    """Names given the integer (-i) or nameref (-n) attribute anywhere in the script, and
    whether some declaration's options are not literal (then any name may have them)."""
    integers: set[str] = set()
    namerefs: set[str] = set()
    unknown = False
    for node in _descendants(root, "declaration_command"):
        flags = _declaration_flags(node)
        if flags is None:
            unknown = True
            continue
        keyword = node.children[0].type if node.children else ""
        names = set()
        for part in node.children[1:]:
            if part.type == "variable_name":
                names.add(_text(part))
            elif part.type == "variable_assignment":
                name = part.child_by_field_name("name")
                if name is not None:
                    names.add(_text(name).split("[", 1)[0])
        if "i" in flags:
            integers |= names
        if "n" in flags and keyword in _NAMEREF_DECLARATIONS:
            namerefs |= names
    return integers, namerefs, unknown

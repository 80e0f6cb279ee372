"""How Bash reads the place of one ``${{ }}`` placeholder in a script's syntax tree.

Walks the ancestors of the placeholder's expansion: the nearest quoting construct decides
how a reference is written there (``Quoting``), and each construct that could make Bash
run or evaluate the value refuses it (``Refused``, with a sentence from ``bashrefusals``).
"""

from __future__ import annotations

import re
from enum import Enum

from . import bashcommands as bc
from . import bashtree as bt
from .bashrefusals import ARITH_REASON, Placed, arith_hint, code_hint, env_hint, env_name
from .bashtree import Node


class Quoting(Enum):
    """How a reference is written at a site that accepts one."""

    WORD = "word"  # "${VAR}"
    BARE = "bare"  # ${VAR}: inside "...", an unquoted heredoc, or arithmetic (numbers only)
    COMMENT = "comment"  # left as written


class Refused(Exception):
    """A check failed; the reason becomes the site's refusal."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


class Walker:
    """Classifies placeholders against one parsed script."""

    def __init__(self, root: Node, source: bytes) -> None:
        self.root = root
        self.source = source
        self.integers, self.namerefs, self.unknown_attributes = bt.attributes(root)

    def expansion_at(self, start: int, end: int) -> Node | None:
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

    def classify(self, expansion: Node, expr: Placed) -> Quoting:
        """Check every ancestor; the nearest quoting construct decides how to write it."""
        quoting: Quoting | None = None
        child = expansion
        for node in bt.ancestors(expansion):
            decided = self._check(node, child, expansion, expr)
            if quoting is None and decided is not None:
                quoting = decided
            child = node
        return quoting or Quoting.WORD

    def _check(self, node: Node, child: Node, exp: Node, expr: Placed) -> Quoting | None:
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
                raise Refused('$"..." may be replaced by a translation; use "..." instead')
            return Quoting.BARE
        if kind in ("command_substitution", "process_substitution"):
            if bt.node_text(node).startswith("`") and "\\" in bt.node_text(node):
                raise Refused(
                    "inside `...` with backslashes Bash re-reads the text before running it; "
                    "use $(...) instead"
                )
            return Quoting.WORD  # a fresh script: quoting outside does not reach inside
        if kind == "heredoc_body":
            self._plain_heredoc(node, exp, expr)
            return Quoting.BARE
        handler = _HANDLERS.get(kind)
        if handler is None:
            raise Refused(
                f"runbook-celery cannot tell how Bash reads this place (inside {kind}); "
                f"{env_hint(expr)}"
            )
        handler(self, node, child, exp, expr)
        return None

    def _plain_heredoc(self, body: Node, exp: Node, expr: Placed) -> None:
        """A value goes in a heredoc only if Bash expands nothing else there but variables.

        tree-sitter-bash misreads substitutions in heredoc bodies: `...` as text, $(( as
        $( (, and a line starting with blanks then $( as text; Bash runs all of them. So a
        body with a substitution or an operator ${...} is not trusted at all.
        """
        text = _PLACEHOLDER.sub("", bt.node_text(body))
        if _HEREDOC_CODE.search(text):
            raise Refused(
                "this heredoc also has $(...), `...`, $((...)) or ${...} with an operator, "
                "which the Bash parser does not read reliably in a heredoc; compute those into "
                "variables before it (x=$(cmd)) and write $x in the heredoc, or "
                f"{env_hint(expr)}"
            )
        before = self.source[: exp.named_children[0].start_byte - 2]  # up to the ${
        if (len(before) - len(before.rstrip(b"\\"))) % 2:
            raise Refused(f"a \\ before it makes Bash take it as text; {env_hint(expr)}")

    def _arithmetic(self, expr: Placed, what: str) -> Quoting:
        if expr.numeric:
            return Quoting.BARE
        raise Refused(f"{what}{ARITH_REASON}; {arith_hint(expr)}")

    # -- handlers: raise Refused or return

    def _expansion(self, node: Node, child: Node, exp: Node, expr: Placed) -> None:
        raise Refused(
            "inside another ${...} the value's place depends on that expansion's operator; "
            f"{env_hint(expr)} (e.g. ${{x:-${env_name(expr.source)}}})"
        )

    def _assignment(self, node: Node, child: Node, exp: Node, expr: Placed) -> None:
        name_node = node.child_by_field_name("name")
        if name_node is not None and name_node.type == "subscript":
            name_node = name_node.child_by_field_name("name")
        name = bt.node_text(name_node) if name_node is not None else ""
        if child == node.child_by_field_name("name"):
            return  # a subscript of the name: the subscript handler decided
        if name in bc.CODE_VARIABLES:
            raise Refused(
                f"{name} tells Bash or the loader what code to run; {env_hint(expr)} if you mean it"
            )
        if name in self.namerefs or self.unknown_attributes:
            raise Refused(
                f"{name or 'this variable'} may be a nameref (declare -n): assigning to it "
                f"evaluates the value as a variable name; {env_hint(expr)}"
            )
        if name in self.integers and not expr.numeric:
            raise Refused(
                f"{name} has the integer attribute (declare -i): {ARITH_REASON}; {arith_hint(expr)}"
            )

    def _array(self, node: Node, child: Node, exp: Node, expr: Placed) -> None:
        element = bt.node_text(child)
        if not element.startswith("["):
            return
        split = element.find("]=")
        offset = exp.start_byte - child.start_byte
        if split < 0 or offset < split:
            if expr.numeric:
                return
            raise Refused(f"an array subscript is arithmetic: {ARITH_REASON}; " + arith_hint(expr))

    def _declaration(self, node: Node, child: Node, exp: Node, expr: Placed) -> None:
        keyword = node.children[0].type if node.children else "declare"
        if child.type != "variable_assignment":
            raise Refused(
                f"{keyword} takes this word as a variable name or option (a subscript in a name "
                f"runs); {env_hint(expr)}"
            )
        flags = bt.declaration_flags(node)
        if flags is None:
            raise Refused(f"{keyword}'s options are not literal words; {env_hint(expr)}")
        if "n" in flags and keyword in bt.NAMEREF_DECLARATIONS:
            raise Refused(
                f"{keyword} -n makes the value a variable name (a subscript in it runs); "
                f"{env_hint(expr)}"
            )
        if "i" in flags and not expr.numeric:
            raise Refused(f"{keyword} -i: {ARITH_REASON}; {arith_hint(expr)}")

    def _test_command(self, node: Node, child: Node, exp: Node, expr: Placed) -> None:
        """``[ ... ]`` is the test command: Bash reads ordinary words there (``<(...)`` runs,
        ``<`` redirects), the parser an expression. Only a plain one is trusted."""
        single = bool(node.children) and node.children[0].type == "["
        if single and re.search(r"[()<>]", bt.node_text(node)):
            raise Refused(
                "inside [ ... ] with parentheses, < or >, Bash reads the words differently "
                f"from the parser; use [[ ... ]], or {env_hint(expr)}"
            )

    def _unset(self, node: Node, child: Node, exp: Node, expr: Placed) -> None:
        raise Refused(f"unset evaluates a subscript in the name it is given; {env_hint(expr)}")

    def _test(self, node: Node, child: Node, exp: Node, expr: Placed) -> None:
        """binary/unary expressions: in [[ ]] the -eq family is arithmetic; -v reads a name."""
        test = next((a for a in bt.ancestors(node) if a.type == "test_command"), None)
        if test is None:
            if any(_is_arithmetic(a) for a in bt.ancestors(node)):
                return  # inside arithmetic: the arithmetic ancestor decides
            raise Refused(
                f"runbook-celery cannot tell how Bash reads this expression; {env_hint(expr)}"
            )
        operator = node.child_by_field_name("operator")
        op = bt.node_text(operator) if operator is not None else ""
        if op in ("-v",):
            raise Refused(f"{op} evaluates a subscript in the variable name; {env_hint(expr)}")
        double = bool(test.children) and test.children[0].type == "[["
        if op in _ARITH_TESTS and double and not expr.numeric:
            raise Refused(f"[[ ... {op} ... ]]: {ARITH_REASON}; {arith_hint(expr)}")

    def _command(self, node: Node, child: Node, exp: Node, expr: Placed) -> None:
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
            raise Refused(f"{refusal.reason}: {ARITH_REASON}; {arith_hint(expr)}")
        hint = code_hint(expr) if refusal.code else env_hint(expr)
        raise Refused(f"{refusal.reason}; {hint}")

    def _redirected(self, node: Node, child: Node, exp: Node, expr: Placed) -> None:
        if bt.is_stdin_redirect(child):
            body = node.child_by_field_name("body")
            if body is not None:
                self._stdin(body, expr, "a here-string or < file feeds it")

    def _heredoc(self, node: Node, child: Node, exp: Node, expr: Placed) -> None:
        if child.type != "heredoc_body":
            return  # a command after the heredoc operator on its line
        if bt.in_quoted_heredoc(child):  # the parser saw an expansion Bash will not make
            raise Refused(f"in a quoted heredoc Bash expands nothing; {env_hint(expr)}")
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

    def _pipeline(self, node: Node, child: Node, exp: Node, expr: Placed) -> None:
        later = False
        for stage in node.children:
            if stage == child:
                later = True
            elif later and stage.is_named:
                self._stdin(stage, expr, "the value is piped into it")

    def _stdin(self, node: Node, expr: Placed, how: str) -> None:
        for command in bt.descendants(node, "command"):
            words, _ = bt.command_words(command, None)
            why = bc.reads_code_from_stdin(words)
            if why is not None:
                raise Refused(f"{how}, and {why}; {code_hint(expr)}")

    def _function(self, node: Node, child: Node, exp: Node, expr: Placed) -> None:
        if child != node.child_by_field_name("body"):
            raise Refused(f"a value cannot name a function; {env_hint(expr)}")


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
    "expansion": Walker._expansion,
    "variable_assignment": Walker._assignment,
    "array": Walker._array,
    "declaration_command": Walker._declaration,
    "unset_command": Walker._unset,
    "test_command": Walker._test_command,
    "binary_expression": Walker._test,
    "unary_expression": Walker._test,
    "ternary_expression": Walker._test,
    "postfix_expression": Walker._test,
    "command": Walker._command,
    "redirected_statement": Walker._redirected,
    "heredoc_redirect": Walker._heredoc,
    "pipeline": Walker._pipeline,
    "function_definition": Walker._function,
    "compound_statement": lambda *_: None,  # { ...; } (the (( )) form is arithmetic)
}

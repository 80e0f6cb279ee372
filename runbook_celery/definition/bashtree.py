"""Reading tree-sitter-bash's syntax tree for bashplace: node helpers and trust checks.

Pure. tree-sitter-bash is error-tolerant and, in a few known shapes, wrong without saying
so (several heredocs started on one line, a heredoc line that starts with blanks and then
``${``). ``whole_script_refusal`` refuses a tree we cannot trust; ``indented_heredoc_patch``
works around the second shape. The rest reads words, declarations and redirections the way
Bash does, as far as placing a value needs.
"""

from __future__ import annotations

import re

import tree_sitter
import tree_sitter_bash

from . import bashcommands as bc

LANGUAGE = tree_sitter.Language(tree_sitter_bash.language())
Node = tree_sitter.Node
NAMEREF_DECLARATIONS = frozenset({"declare", "typeset", "local"})
_DECLARATIONS = NAMEREF_DECLARATIONS | {"export", "readonly"}


def parse(source: bytes) -> tree_sitter.Tree:
    """A fresh parser per call: parsers are cheap and not shared between threads."""
    return tree_sitter.Parser(LANGUAGE).parse(source)


def line_of(node: Node) -> int:
    return node.start_point[0] + 1


def whole_script_refusal(root: Node) -> str | None:
    """A reason no placement in this script can be trusted: the tree is not Bash's tree."""
    if b"expand_aliases" in (root.text or b""):
        return (
            "the script turns on alias expansion, so a command name may not mean what it "
            "says; define a function instead of an alias"
        )
    if root.has_error:
        bad = _first_error(root)
        where = f" near line {line_of(bad)} of the script" if bad is not None else ""
        return (
            f"the Bash parser cannot read this script{where}, so where the value lands is "
            "unknown; fix the syntax"
        )
    heredocs = [
        (h, start)
        for h in descendants(root, "heredoc_redirect")
        if (start := child_of_type(h, "heredoc_start")) is not None
    ]
    lines = [start.start_point[0] for _, start in heredocs]
    for line in lines:
        if lines.count(line) > 1:
            return (
                f"line {line + 1} of the script starts two heredocs, which the Bash parser "
                "does not read reliably; put each heredoc on its own line"
            )
    for heredoc, start in heredocs:
        problem = _heredoc_problem(heredoc, start, root.text or b"")
        if problem is not None:
            return problem
    return None


def _heredoc_problem(heredoc: Node, start: Node, source: bytes) -> str | None:
    """A heredoc whose body the parser did not end at its delimiter line (the whole line)."""
    body = child_of_type(heredoc, "heredoc_body")
    end = child_of_type(heredoc, "heredoc_end")
    if body is None and end is None:
        return None
    delimiter = re.sub(r"""['"\\]""", "", node_text(start))
    dash = any(c.type == "<<-" for c in heredoc.children)
    ended = _whole_line(source, end.start_byte) if end is not None else None
    if ended is None or (ended.lstrip("\t") if dash else ended) != delimiter:
        return (
            f"the Bash parser does not end the heredoc started on line {line_of(start)} of "
            f"the script at a line {delimiter!r}; write that heredoc more simply"
        )
    if body is not None:
        lines = node_text(body).split("\n")
        for line in lines[:-1]:
            if (line.lstrip("\t") if dash else line) == delimiter:
                return (
                    f"the Bash parser reads the heredoc started on line {line_of(start)} of "
                    "the script past its end; write that heredoc more simply"
                )
    return None


def _whole_line(source: bytes, offset: int) -> str:
    """The line of ``source`` that contains byte ``offset``, without its newline."""
    start = source.rfind(b"\n", 0, offset) + 1
    end = source.find(b"\n", offset)
    return source[start : end if end >= 0 else len(source)].decode("utf-8", "replace")


def _first_error(node: Node) -> Node | None:
    if node.type == "ERROR" or node.is_missing:
        return node
    for child in node.children:
        if child.has_error or child.is_missing:
            found = _first_error(child)
            if found is not None:
                return found
    return None


def descendants(node: Node, kind: str) -> list[Node]:
    out: list[Node] = []
    stack = [node]
    while stack:
        current = stack.pop()
        if current.type == kind:
            out.append(current)
        stack.extend(reversed(current.children))
    return out


def child_of_type(node: Node, kind: str) -> Node | None:
    return next((c for c in node.children if c.type == kind), None)


def node_text(node: Node) -> str:
    return (node.text or b"").decode("utf-8", "replace")


def in_quoted_heredoc(node: Node) -> bool:
    for ancestor in ancestors(node, include_self=True):
        if ancestor.type == "heredoc_redirect":
            start = child_of_type(ancestor, "heredoc_start")
            return start is not None and any(q in node_text(start) for q in "'\"\\")
    return False


def ancestors(node: Node, include_self: bool = False) -> list[Node]:
    out = [node] if include_self else []
    current = node.parent
    while current is not None:
        out.append(current)
        current = current.parent
    return out


def is_arith_compound(node: Node) -> bool:
    return bool(node.children) and node.children[0].type == "(("


def translated(string: Node) -> bool:
    """``$"..."``: tree-sitter-bash reads the ``$`` as a separate token before the string."""
    previous = string.prev_sibling
    return previous is not None and previous.type == "$" and previous.end_byte == string.start_byte


def is_stdin_redirect(node: Node) -> bool:
    if node.type == "herestring_redirect":
        return True
    if node.type != "file_redirect":
        return False
    return any(c.type in ("<", "<&", "<>") for c in node.children)


def literal(node: Node) -> str | None:
    """The text a word stands for if it expands nothing (quotes removed), else None."""
    kind = node.type
    if kind == "command_name":
        return literal(node.children[0]) if node.children else None
    if kind in ("word", "number"):
        text = node_text(node)
        return None if "$" in text or "`" in text else re.sub(r"\\(.)", r"\1", text, flags=re.S)
    if kind == "raw_string":
        return node_text(node)[1:-1]
    if kind == "string":
        parts = [c for c in node.children if c.type not in ('"',)]
        if all(c.type == "string_content" for c in parts):
            return re.sub(r'\\([$`"\\])', r"\1", "".join(node_text(c) for c in parts))
        return None
    if kind == "concatenation":
        pieces = [literal(c) for c in node.children]
        return None if any(p is None for p in pieces) else "".join(p or "" for p in pieces)
    return None


_ASSIGN_PREFIX = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=")


def command_words(command: Node, child: Node | None) -> tuple[list[bc.Word], int | None]:
    """The command's name and arguments, and the index of the one that is ``child``."""
    words: list[bc.Word] = []
    index: int | None = None
    for i, part in enumerate(command.children):
        field = command.field_name_for_child(i)
        if field not in ("name", "argument"):
            continue
        match = _ASSIGN_PREFIX.match(node_text(part))
        words.append(bc.Word(literal(part), match.group(1) if match else None, stays_one(part)))
        if part == child:
            index = len(words) - 1
    return words, index


_PLACEHOLDER_NAME = re.compile(r"__RBX[0-9]+__")


def stays_one(node: Node) -> bool:
    """Whether a word expands to exactly one word: no unquoted $x, $(...) or {a,b} that could
    split. A placeholder counts as one: it is written quoted."""
    kind = node.type
    if kind in ("word", "number", "raw_string", "ansi_c_string", "string", "process_substitution"):
        return kind != "word" or not re.search(r"\{[^}]*,", node_text(node))
    if kind == "expansion":
        names = [c for c in node.named_children if c.type == "variable_name"]
        return (
            len(node.named_children) == 1
            and bool(names)
            and bool(_PLACEHOLDER_NAME.fullmatch(node_text(names[0])))
        )
    if kind in ("concatenation", "command_name"):
        return all(stays_one(c) for c in node.children)
    return False


def declaration_flags(node: Node) -> str | None:
    """The letters of a declaration's options (``-ix`` -> ``ix``); None if one is not literal."""
    letters = ""
    for part in node.children[1:]:
        if part.type in ("variable_assignment", "variable_name"):
            continue
        text = literal(part)
        if text is None:
            return None
        if text[:1] in ("-", "+"):
            letters += text[1:]
    return letters


def attributes(root: Node) -> tuple[set[str], set[str], bool]:
    """Names given the integer (-i) or nameref (-n) attribute anywhere in the script, and
    whether some declaration's options are not literal (then any name may have them)."""
    integers: set[str] = set()
    namerefs: set[str] = set()
    # a declaration read as a plain command (after `!` or a wrapper): its names are unknown
    unknown = any(
        literal(c.children[0]) in _DECLARATIONS
        for c in descendants(root, "command")
        if c.children and c.children[0].type == "command_name"
    )
    for node in descendants(root, "declaration_command"):
        flags = declaration_flags(node)
        if flags is None:
            unknown = True
            continue
        keyword = node.children[0].type if node.children else ""
        names = set()
        for part in node.children[1:]:
            if part.type == "variable_name":
                names.add(node_text(part))
            elif part.type == "variable_assignment":
                name = part.child_by_field_name("name")
                if name is not None:
                    names.add(node_text(name).split("[", 1)[0])
        if "i" in flags:
            integers |= names
        if "n" in flags and keyword in NAMEREF_DECLARATIONS:
            namerefs |= names
    return integers, namerefs, unknown


def indented_heredoc_patch(root: Node, source: bytes, spans: list[tuple[int, int]]) -> bytes:
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


NAMEREF_DECLARATIONS = frozenset({"declare", "typeset", "local"})
_DECLARATIONS = NAMEREF_DECLARATIONS | {"export", "readonly"}

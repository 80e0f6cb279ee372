"""The sentences of a refused ``${{ }}`` placement in Bash: why, and what to write instead."""

from __future__ import annotations

import re
from typing import Protocol

from . import bashcommands as bc
from . import bashtree as bt
from .bashtree import Node


class Placed(Protocol):
    """A ``${{ }}`` being placed: its source (for messages) and if it is always a number."""

    @property
    def source(self) -> str: ...

    @property
    def numeric(self) -> bool: ...


_ENV_RESERVED = frozenset({"PATH", "HOME", "USER", "SHELL", "PWD", "IFS", "LANG", "TERM", "UID"})


def env_name(source: str) -> str:
    """A readable environment variable name to suggest for an expression."""
    last = source.split(".")[-1] if source != "item" else "item"
    name = re.sub(r"[^A-Za-z0-9_]", "_", last).upper() or "VALUE"
    if name[0].isdigit() or name in _ENV_RESERVED or name in bc.CODE_VARIABLES:
        name = f"V_{name}"
    return name


def env_hint(expr: Placed) -> str:
    name = env_name(expr.source)
    return f'put it in the step\'s env: ({name}: ${{{{ {expr.source} }}}}) and write "${name}"'


ARITH_REASON = (
    "Bash evaluates this as arithmetic, which runs the $(...) in a value such as a[$(cmd)]"
)


def arith_hint(expr: Placed) -> str:
    name = env_name(expr.source)
    check = f"after checking it is a number ([[ ${name} =~ ^-?[0-9]+$ ]])"
    if expr.source.startswith("params."):
        return (
            "declare the param with type: number (checked when a run is triggered), or "
            f"{env_hint(expr)} {check}"
        )
    return f"{env_hint(expr)} {check}"


def code_hint(expr: Placed) -> str:
    name = env_name(expr.source)
    return (
        f"{env_hint(expr)}, and have that code read {name} from its environment "
        f'(os.environ[\'{name}\'] in Python, ENVIRON["{name}"] in awk), or pass "${name}" '
        f'as an argument after the code (sh -c \'... "$1"\' _ "${name}")'
    )


def unexpanded_refusal(node: Node, expr: Placed) -> str:
    """Why a placeholder that Bash would not expand cannot hold a value."""
    kinds = {n.type for n in bt.ancestors(node, include_self=True)}
    if "raw_string" in kinds:
        return (
            "inside single quotes Bash expands nothing, so the value would be spliced into "
            f'the quoted text; use double quotes ("...${{{{ {expr.source} }}}}...") if the text '
            f"is data, else {code_hint(expr)}"
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
            f"else {code_hint(expr)}"
        )
    if "regex" in kinds:
        return (
            "the right side of =~ is a regular expression, read by a parser that cannot place "
            f'a value in it; {env_hint(expr)} ([[ $s =~ "${env_name(expr.source)}" ]] matches '
            "it literally)"
        )
    return (
        f"Bash does not expand this place as a variable ({node.type}), so where the value "
        f"would land is unknown; {env_hint(expr)}"
    )

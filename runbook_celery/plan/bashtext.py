"""``${{ }}`` in a step's text: placed in Bash as variable references, filled into values.

Pure. A value never becomes shell text: ``rewrite_command`` turns each expression in a
``run:`` into a reference to an environment variable that holds its value on the worker
(``definition/bashplace.py`` decides where a reference may go); ``substitute_text`` fills
a value template (``env:``) with resolved expressions as data.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from typing import Any

from ..definition import bashplace
from ..definition import expressions as ex
from ..definition.bashclassify import Quoting


def _var_name(node: ex.Node, source: str, taken: dict[str, str]) -> str:
    """A readable environment variable name for an expression, unique within a step."""
    ref = node if isinstance(node, ex.Ref) else ex.Ref("expr")
    if ref.kind == "expr":  # a computed value: toJSON(...), a comparison, ...
        base = "RUNBOOK_EXPR"
    elif ref.kind == "status":
        base = f"RUNBOOK_STATUS_{ref.name}"
    elif ref.kind == "run_status":
        base = "RUNBOOK_RUN_STATUS"
    elif ref.kind == "needs":
        base = "RUNBOOK_NEEDS"
    elif ref.kind == "params":
        base = f"RUNBOOK_PARAM_{ref.name}"
    elif ref.kind == "outputs":
        base = f"RUNBOOK_OUT_{ref.name}__{ref.key}"
    elif ref.kind == "all_outputs":
        base = f"RUNBOOK_OUTS_{ref.name}"
    elif ref.kind == "matrix":
        base = f"RUNBOOK_MATRIX_{ref.name}"
    else:
        base = "RUNBOOK_ITEM"
    base = re.sub(r"[^A-Za-z0-9_]", "_", base)
    name, n = base, 1
    while name in taken and taken[name] != source:
        n += 1
        name = f"{base}_{n}"
    return name


def rewrite_command(
    text: str, vars_out: dict[str, str], numeric: Collection[str] = frozenset()
) -> str:
    """Replace each ``${{ ref }}`` with a reference to an environment variable holding it.

    The value never becomes shell text: ``bashplace`` reads the script's Bash syntax and
    writes ``"${VAR}"`` where a word is expected, ``${VAR}`` inside double quotes or an
    unquoted heredoc, and leaves comments alone; it refuses (``bashplace.Unplaceable``) where
    no reference is safe. ``numeric`` names the references that are always decimal numbers
    (``params.N`` of type number, all-numeric ``matrix.K``), which arithmetic may use.
    ``vars_out`` receives ``{VAR: expression source}``.
    """
    occurrences = ex.find(text)
    if not occurrences:
        return text
    exprs: list[bashplace.Expr] = []
    for occ in occurrences:
        if ex.calls(occ.node):
            raise ex.ExpressionError(
                f"${{{{ {occ.source} }}}}: status functions belong in 'if:' only"
            )
        is_number = isinstance(occ.node, ex.Ref) and occ.node.text() in numeric
        exprs.append(bashplace.Expr(occ.start, occ.end, occ.source, is_number))
    sites = bashplace.place(text, exprs)
    names: list[str | None] = []
    if all(site.quoting is not None for site in sites):
        for occ, site in zip(occurrences, sites, strict=True):
            if site.quoting is Quoting.COMMENT:
                names.append(None)
                continue
            source = occ.node.text() if isinstance(occ.node, ex.Ref) else occ.source
            var = _var_name(occ.node, source, vars_out)
            vars_out[var] = source
            names.append(var)
    return bashplace.render(text, sites, names)


def substitute_text(template: str, resolve: Callable[[ex.Ref], Any]) -> str:
    """Fill a value template (env values) with resolved expressions. Values stay data."""
    return ex.substitute(template, resolve)

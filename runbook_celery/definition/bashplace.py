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
tree and the checks that it can be trusted in ``bashtree``, how one place is read in
``bashclassify``, and the refusals' sentences in ``bashrefusals``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from . import bashtree as bt
from .bashclassify import Quoting, Refused, Walker
from .bashrefusals import env_hint, unexpanded_refusal

__all__ = ["Expr", "Site", "Unplaceable", "place", "render"]


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
        return [Site(e, None, f"{whole}; {env_hint(e)}") for e in exprs]
    walker = Walker(tree.root_node, source)
    return [_site(walker, e, s, t) for e, (s, t) in zip(exprs, spans, strict=True)]


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


def _site(walker: Walker, expr: Expr, start: int, end: int) -> Site:
    """How the placeholder of ``expr`` at ``start:end`` is written, or why it cannot be."""
    expansion = walker.expansion_at(start, end)
    if expansion is None:
        node = walker.root.descendant_for_byte_range(start, end) or walker.root
        if any(n.type == "comment" for n in bt.ancestors(node, include_self=True)):
            return Site(expr, Quoting.COMMENT)
        return Site(expr, None, unexpanded_refusal(node, expr))
    try:
        quoting = walker.classify(expansion, expr)
    except Refused as refused:
        return Site(expr, None, refused.reason)
    return Site(expr, quoting)

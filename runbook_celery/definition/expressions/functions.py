"""GitHub Actions' value functions (``contains``, ``format``, ``toJSON``, ...) and how a
value becomes text; results bounded by ``MAX_VALUE_CHARS``."""

from __future__ import annotations

import json
import re
from typing import Any

from .tree import EvaluationError

# The largest text a function may produce: the size of the largest step output.
MAX_VALUE_CHARS = 1024 * 1024


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


def loads_or_none(text: str) -> Any:
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


def call_function(name: str, args: list[Any]) -> Any:
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

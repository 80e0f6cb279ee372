"""Pydantic's validation errors as problems at ``FILE:LINE: path: message``, with a
did-you-mean for an unknown key and sentences a user can act on."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import ValidationError

from ..core.errors import Problem
from .model import Defaults, Notify, Param, Workflow
from .stepmodel import Retries, Step
from .yamlload import LoadedYaml, YamlPath, format_path


def _step_id_at(doc: LoadedYaml, loc: tuple[Any, ...]) -> str | None:
    if len(loc) >= 2 and loc[0] == "steps" and isinstance(loc[1], int):
        steps = doc.data.get("steps") if isinstance(doc.data, dict) else None
        if isinstance(steps, list) and loc[1] < len(steps) and isinstance(steps[loc[1]], dict):
            sid = steps[loc[1]].get("id")
            return sid if isinstance(sid, str) else None
    return None


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    """Keys allowed in the mapping that holds ``loc[-1]`` (for did-you-mean hints)."""
    parent = [p for p in loc[:-1] if not isinstance(p, int)]
    if len(parent) == 2 and parent[0] == "params":
        return list(Param.model_fields)
    model: Any = {
        (): Workflow,
        ("steps",): Step,
        ("defaults",): Defaults,
        ("steps", "retries"): Retries,
        ("defaults", "retries"): Retries,
        ("notify",): Notify,
    }.get(tuple(parent))
    if model is None:
        return []
    return [f.alias or n for n, f in model.model_fields.items()]


_UNION_TAGS = {"str", "int", "float", "bool"}


def pydantic_problems(exc: ValidationError, doc: LoadedYaml) -> list[Problem]:
    problems: list[Problem] = []
    seen: set[tuple[str, str]] = set()
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not isinstance(p, str) or not p.startswith("function"))
        kind = err["type"]
        key_error = "[key]" in loc
        loc = tuple(p for p in loc if p != "[key]")
        scalar_union = loc[:1] == ("params",) and len(loc) == 3 and loc[-1] in _UNION_TAGS
        if scalar_union:
            loc = loc[:-1]
        path: YamlPath = loc
        if scalar_union:
            message = "must be a string, number or boolean"
            line = doc.line_of(loc)
        elif key_error:
            message = (
                f"{loc[-1]!r} is not a valid name: use letters, digits and '_', "
                "not starting with a digit"
            )
            line = doc.line_of(loc)
        elif kind == "extra_forbidden":
            key = str(loc[-1])
            hint = difflib.get_close_matches(key, _known_keys(loc), n=1)
            message = f"unknown key {key!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
            path = loc[:-1]
            line = doc.line_of(loc)
        elif kind == "missing":
            message = f"missing required key {loc[-1]!r}"
            path = loc[:-1]
            line = doc.line_of(path)
        else:
            message = err["msg"]
            if kind == "string_pattern_mismatch" and loc and loc[-1] in ("id", "name"):
                message = (
                    "must start with a letter or '_' and contain only letters, digits, "
                    "'_' and '-' (at most 64 characters)"
                )
            elif "input" in err and kind.endswith("_type"):
                message += f" (got {type(err['input']).__name__})"
            line = doc.line_of(loc)
        if (format_path(path), message) in seen:
            continue
        seen.add((format_path(path), message))
        problems.append(Problem(doc.file, line, message, format_path(path), _step_id_at(doc, loc)))
    return problems

"""Event types and failure reasons are defined once (events.py), and the code emits no other.

The emitted vocabulary is read from the source itself, so a new event written anywhere
(a Lua script, a Python call) fails this test until it is added to the enums and README:

* Lua (in Python strings or ``.lua`` files): ``'type', 'step_x'`` literals, and
  ``'type', 'step_' .. status`` constructions, resolved against the terminal statuses;
  ``'reason', 'x'`` literals.
* Python: ``{"type": "x", "run_id": ...}`` dict literals; string arguments of calls to
  anything named like ``*event*``/``*emit*``; ``event=``/``etype=`` keywords;
  identifier-like strings in ``reason=`` keywords (sentences such as ``f"skipped by {by}"``
  are descriptions).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from runbook_celery.cli.observe import events_command
from runbook_celery.store.events import (
    TERMINAL_RUN_STATUSES,
    EventType,
    FailureReason,
    StepStatus,
    WaitReason,
)

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "runbook_celery"
README = (ROOT / "README.md").read_text()

EVENT_SHAPE = re.compile(r"^(step|workflow)_[a-z]+(_[a-z]+)*$")
IDENTIFIER = re.compile(r"^[a-z]+(_[a-z]+)*$")
LUA_TYPE = re.compile(r"'type',\s*'([a-z_]+)'(\s*\.\.\s*([A-Za-z_][\w\[\]]*))?")
LUA_REASON = re.compile(r"'reason',\s*'([a-z_]+)'\s*[,}]")
# What a Lua `'<prefix>' .. variable` can stand for: a step or run that has finished.
STATUS_SUFFIXES = {
    "step_": {s.value for s in StepStatus if s.terminal},
    "workflow_": set(TERMINAL_RUN_STATUSES),
}


class Emitted:
    """Event types and reasons found in the source, each with where it was found."""

    def __init__(self) -> None:
        self.types: dict[str, str] = {}
        self.reasons: dict[str, str] = {}
        self.unresolved: list[str] = []

    def scan_lua(self, text: str, where: str) -> None:
        for m in LUA_TYPE.finditer(text):
            literal, joined = m.group(1), m.group(3)
            if not joined:
                self.types.setdefault(literal, where)
            elif literal in STATUS_SUFFIXES:
                for suffix in STATUS_SUFFIXES[literal]:
                    self.types.setdefault(literal + suffix, where)
            else:
                self.unresolved.append(f"{where}: '{literal}' .. {joined}")
        for m in LUA_REASON.finditer(text):
            self.reasons.setdefault(m.group(1), where)

    def scan_python(self, path: Path) -> None:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            where = f"{path.name}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                self.scan_lua(node.value, where)  # Lua scripts live in Python strings
            elif isinstance(node, ast.Dict) and "run_id" in {_const(k) for k in node.keys}:
                # an event is a dict with a run id (a JSON Schema's {"type": ...} is not)
                for key, value in zip(node.keys, node.values, strict=True):
                    if _const(key) == "type":
                        for etype in _strings(value):
                            self.types.setdefault(etype, where)
            elif isinstance(node, ast.Call):
                self._scan_call(node, where)

    def _scan_call(self, call: ast.Call, where: str) -> None:
        name = _callee(call)
        if "event" in name or "emit" in name:
            for arg in call.args:
                for value in _strings(arg):
                    if EVENT_SHAPE.match(value):
                        self.types.setdefault(value, where)
        for kw in call.keywords:
            if kw.arg in ("event", "etype", "event_type"):
                for value in _strings(kw.value):
                    self.types.setdefault(value, where)
            elif kw.arg == "reason":
                for value in _strings(kw.value):
                    if IDENTIFIER.match(value):
                        self.reasons.setdefault(value, where)


def _const(node: ast.AST | None) -> object:
    return node.value if isinstance(node, ast.Constant) else None


def _callee(call: ast.Call) -> str:
    func = call.func
    if isinstance(func, ast.Attribute):
        return func.attr.lower()
    return func.id.lower() if isinstance(func, ast.Name) else ""


ENUMS = {"EventType": EventType, "FailureReason": FailureReason, "WaitReason": WaitReason}


def _strings(node: ast.AST) -> Iterator[str]:
    """The literal values an expression can take (``x or "aborted"``, ``EventType.X``).

    Not the inside of f-strings (descriptions) or of calls (``h.get("reason")`` is a
    lookup, not a value).
    """
    if isinstance(node, ast.JoinedStr | ast.Call):
        return
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value:
        yield node.value
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        enum = ENUMS.get(node.value.id)
        if enum is not None:
            yield enum[node.attr].value
        return
    for child in ast.iter_child_nodes(node):
        yield from _strings(child)


@pytest.fixture(scope="module")
def emitted() -> Emitted:
    found = Emitted()
    for path in sorted(PACKAGE.rglob("*.py")):
        found.scan_python(path)
    for path in sorted(PACKAGE.rglob("*.lua")):
        found.scan_lua(path.read_text(), path.name)
    return found


def test_every_emitted_event_type_is_in_the_vocabulary(emitted):
    unknown = {t: where for t, where in emitted.types.items() if t not in set(EventType)}
    assert not unknown, f"add these to events.EventType (and README): {unknown}"


def test_every_lua_construction_of_a_type_can_be_resolved(emitted):
    assert not emitted.unresolved, (
        "an event type built from a variable with an unknown prefix; teach STATUS_SUFFIXES "
        f"what it can be: {emitted.unresolved}"
    )


def test_every_emitted_reason_is_in_the_vocabulary(emitted):
    known = set(FailureReason) | set(WaitReason)
    unknown = {r: where for r, where in emitted.reasons.items() if r not in known}
    assert not unknown, f"add these to events.FailureReason or WaitReason: {unknown}"


def test_every_type_in_the_vocabulary_is_emitted_somewhere(emitted):
    # also proves the scan above finds what it should: an enum entry nobody emits is stale
    assert set(EventType) - set(emitted.types) == set()


def test_the_scan_finds_the_issues_examples(emitted):
    for etype in ("step_approved", "step_awaiting_decision", "workflow_paused", "step_failed"):
        assert etype in emitted.types
    for reason in ("rejected", "approval_timeout", "instance_failed", "bad_input"):
        assert reason in emitted.reasons


@pytest.mark.parametrize("value", [*EventType, *FailureReason], ids=str)
def test_the_readme_lists_every_event_type_and_failure_reason(value):
    assert f"`{value}`" in README


def test_events_type_accepts_every_event_type():
    (option,) = [p for p in events_command.params if p.name == "types"]
    assert isinstance(option.type, click.Choice)
    assert set(option.type.choices) == {t.value for t in EventType}
